"""Checkpoints: a checksum catches bytes damaged in place and the previous checkpoint takes over; loading never
runs code from the file (weights_only); checkpoints written before checksums (peerkd-checkpoint-1) still load."""
import io
import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import tiny_vanilla_config
from peerkd import cli
from peerkd.training.checkpoint import (CHECKPOINT, PREVIOUS_CHECKPOINT, RunError, checkpoint_problem,
                                       load_checkpoint, load_run, read_checkpoint)
from peerkd.training.trainer import Trainer, train

def _config(epochs: int = 2, **kwargs):
    return tiny_vanilla_config(epochs, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch run: checkpoint.pt (epoch 2) and checkpoint.prev.pt (epoch 1)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_config(), run_dir=run)
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _flip(path, count=256):
    """Invert ``count`` bytes in the middle of the file, in place."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def test_a_checkpoint_damaged_in_place_is_detected_and_the_previous_one_takes_over(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
    _flip(run / CHECKPOINT)
    with pytest.raises(RunError, match="damaged: its checksum does not match"):
        read_checkpoint(run / CHECKPOINT)
    assert "checksum does not match" in checkpoint_problem(run / CHECKPOINT)
    assert read_checkpoint(run / PREVIOUS_CHECKPOINT)["epoch"] == 1
    capsys.readouterr()
    state = load_checkpoint(run / CHECKPOINT)
    line = capsys.readouterr().err.strip()
    assert state["epoch"] == 1 and len(line.splitlines()) == 1
    assert "checksum does not match" in line and "using checkpoint.prev.pt (epoch 1" in line
    # the run resumes from the previous checkpoint and trains on; the damaged file is never kept as "previous"
    summary = Trainer(_config(), run_dir=run, resume=True).fit()
    assert summary["epochs"] == 2
    assert read_checkpoint(run / CHECKPOINT)["epoch"] == 2  # epoch 2 trained again
    assert read_checkpoint(run / PREVIOUS_CHECKPOINT)["epoch"] == 1  # the damaged file was not rotated in
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "resume" and history[-1]["from"] == PREVIOUS_CHECKPOINT
    assert history[-1]["epoch"] == 1


def test_no_good_checkpoint_left_is_exit_2(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        if (run / name).exists():
            _flip(run / name)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no good checkpoint is left" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


class _WritesAFile:
    """Unpickling this calls ``exec``, which writes a file: what a checkpoint from elsewhere could do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('code ran')",)


@pytest.mark.parametrize("with_header", [False, True])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(finished_run, tmp_path, capsys, with_header):
    # the current file layout, with a valid checksum of the bad payload
    from peerkd.training.checkpoint import _checkpoint_bytes

    run = _copy(finished_run, tmp_path)
    target = tmp_path / "written-by-the-checkpoint"
    state = dict(read_checkpoint(run / CHECKPOINT), surprise=_WritesAFile(target))
    if with_header:
        (run / CHECKPOINT).write_bytes(_checkpoint_bytes(state))
    else:  # a bare torch.save file, as peerkd-checkpoint-1 was
        torch.save(dict(state, format="peerkd-checkpoint-1"), run / CHECKPOINT)
    (run / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
    capsys.readouterr()
    for argv in (["eval", str(run), "--device", "cpu"], ["train", "--resume", str(run)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "holds more than tensors" in err and "Traceback" not in err
    with pytest.raises(RunError, match="holds more than tensors"):
        load_run(run)  # also how kd / tfkd read a teacher run
    assert not target.exists()


def test_a_checkpoint_written_before_checksums_still_loads(finished_run, tmp_path):
    """peerkd-checkpoint-1: a bare torch.save zip whose numpy RNG state is an ndarray."""
    run = _copy(finished_run, tmp_path)
    state = read_checkpoint(run / CHECKPOINT)
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    torch.save(dict(state, format="peerkd-checkpoint-1"), run / CHECKPOINT)
    (run / PREVIOUS_CHECKPOINT).unlink()
    assert checkpoint_problem(run / CHECKPOINT) is None  # no checksum to verify
    loaded = load_run(run)
    assert loaded.epoch == 2
    summary = Trainer(_config(epochs=3), run_dir=run, resume=True).fit()
    assert summary["epochs"] == 3
    assert (run / CHECKPOINT).read_bytes().startswith(b"PEERKD-CHECKPOINT-2\n")  # rewritten in the current format


def test_the_checkpoint_holds_only_tensors_and_plain_containers(finished_run):
    data = (finished_run / CHECKPOINT).read_bytes()
    payload = data[data.index(b"\n", len(b"PEERKD-CHECKPOINT-2\n")) + 1:]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(payload)) == []


def test_a_saved_config_that_no_longer_validates_is_one_run_error(finished_run, tmp_path):
    """load_run and a resume read the checkpoint's config the same way: a RunError naming the checkpoint."""
    from peerkd.training.checkpoint import _checkpoint_bytes

    run = _copy(finished_run, tmp_path)
    state = read_checkpoint(run / CHECKPOINT)
    state["config"]["method"]["no_such_option"] = 1
    (run / CHECKPOINT).write_bytes(_checkpoint_bytes(state))
    (run / PREVIOUS_CHECKPOINT).unlink()
    with pytest.raises(RunError, match=f"the config saved in {run / CHECKPOINT} no longer validates: .*no_such_option"):
        load_run(run)
    with pytest.raises(RunError, match="no longer validates: .*no_such_option"):
        Trainer(_config(), run_dir=run, resume=True)
