"""The run folder: one writer at a time (a lock, stale locks taken over), no foreign folder written into, a resume's
config checked and recorded, logs past the checkpoint dropped, a full disk or an unwritable folder reported in one
line, files that follow the umask."""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import tiny_vanilla_config
from peerkd import cli
from peerkd.training.checkpoint import CHECKPOINT, RunError, load_checkpoint
from peerkd.core.run_lock import LOCK_FILE, RunLock
from peerkd.training.trainer import Trainer, train

def _config(epochs: int = 1, **kwargs):
    return tiny_vanilla_config(epochs, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 1-epoch run (4 steps, a training-log line every step)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_config(overrides=("trainer.log_every=1",)), run_dir=run)
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


# ---------------------------------------------------------------------------------------------------- the lock

def _hold_lock_in_another_process(run):
    """A process (not peerkd) holding the run folder's flock, as a running `peerkd train` does."""
    code = ("import fcntl, json, os, socket, sys\n"
            f"fd = os.open({str(run / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0)\n"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'now'}).encode())\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_gets_exit_2_naming_the_holder(finished_run, tmp_path, capsys):
    pytest.importorskip("fcntl")
    run = _copy(finished_run, tmp_path)
    holder = _hold_lock_in_another_process(run)
    try:
        capsys.readouterr()
        assert cli.main(["train", "--resume", str(run), "--set", "schedule.epochs=2"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another peerkd process (pid {holder.pid} on {socket.gethostname()}" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 1  # nothing was trained


def test_two_writers_in_one_process_and_the_lock_is_given_back(tmp_path):
    run = tmp_path / "run"
    first = Trainer(_config(), run_dir=run)
    with pytest.raises(RunError, match=f"in use by another peerkd process \\(pid {os.getpid()}"):
        Trainer(_config(), run_dir=run)
    first.fit()  # gives the folder back at the end
    resumed = Trainer(_config(epochs=2), run_dir=run, resume=True)
    with pytest.raises(RunError, match="in use"):  # two simultaneous --resume: the second is refused
        Trainer(_config(epochs=2), run_dir=run, resume=True)
    resumed.release()


def test_the_lock_of_a_killed_process_is_taken_over(finished_run, tmp_path):
    pytest.importorskip("fcntl")
    run = _copy(finished_run, tmp_path)
    holder = _hold_lock_in_another_process(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # its lock file is still there
    trainer = Trainer(_config(epochs=2), run_dir=run, resume=True)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    trainer.release()


def test_without_fcntl_the_lock_file_is_the_lock(tmp_path, monkeypatch):
    import peerkd.core.run_lock as lock_module

    monkeypatch.setattr(lock_module, "fcntl", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    lock = RunLock(tmp_path)
    lock.acquire()  # its holder is dead: taken over
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(RunError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------- what the folder is

def test_a_folder_that_is_not_a_peerkd_run_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own notes\n")
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    config = tmp_path / "c.yaml"
    config.write_text(_config().to_yaml())
    capsys.readouterr()
    assert cli.main(["train", "-c", str(config), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is not empty (config.yaml, metrics.jsonl) and is not a peerkd run" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert (folder / "config.yaml").read_text() == "my own notes\n"
    assert (folder / "metrics.jsonl").read_text() == '{"mine": 1}\n'


def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    run = tmp_path / "run"

    def crash(trainer):
        if trainer.global_step == 2:
            raise KeyboardInterrupt  # a kill before the first checkpoint (KeyboardInterrupt: not caught on the way)

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(overrides=("trainer.log_every=1",)), run_dir=run, on_step=crash).fit()
    assert not (run / CHECKPOINT).exists() and (run / "metrics.jsonl").read_text()
    train(_config(overrides=("trainer.log_every=1",)), run_dir=run)
    steps = [json.loads(line)["global_step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4]  # four training lines and the evaluation; none of the first attempt
    assert [json.loads(line)["event"] for line in (run / "history.jsonl").read_text().splitlines()] == \
        ["start", "start"]


def test_stale_temporary_files_of_a_killed_write_are_removed(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    stale = run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    Trainer(_config(epochs=2), run_dir=run, resume=True).release()
    assert not stale.exists()


# --------------------------------------------------------------------------------------------------- resume

def test_resume_with_another_config_is_refused_naming_the_keys(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    config_yaml = (run / "config.yaml").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(_config(overrides=("optim.lr=0.2", "seed=3", "schedule.epochs=2")).to_yaml())
    capsys.readouterr()
    for argv in (["train", "--resume", str(run), "-c", str(other)],
                 ["train", "--resume", str(run), "--set", "optim.lr=0.2", "--set", "seed=3"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "optim.lr (0.05 -> 0.2), seed (0 -> 3)" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == config_yaml
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 1


def test_resume_may_not_undo_what_was_trained(finished_run):
    from peerkd.training.run_folder import resume_changes

    state = load_checkpoint(finished_run / CHECKPOINT)
    state["config"]["schedule"].update(kind="multistep", milestones=[1, 3])
    state["epoch"] = 2  # epochs 0 and 1 trained, the second at lr x gamma (milestone 1)
    multistep = ("schedule.kind=multistep", "trainer.log_every=1")
    with pytest.raises(RunError, match="change milestones the run has passed"):
        resume_changes(state, _config(epochs=4, overrides=multistep + ("schedule.milestones=[2, 3]",)), finished_run)
    # a later one may move
    assert resume_changes(state, _config(epochs=4, overrides=multistep + ("schedule.milestones=[1, 2]",)),
                          finished_run) == {"schedule.epochs": [1, 4], "schedule.milestones": [[1, 3], [1, 2]]}
    state["epoch"] = 3
    with pytest.raises(RunError, match="has trained 3 epochs; ask for at least 3"):
        resume_changes(state, _config(epochs=2, overrides=multistep + ("schedule.milestones=[1, 3]",)), finished_run)


def test_the_keys_a_resume_may_change_are_the_schema_fields_tagged_resumable():
    from peerkd.training.run_folder import RESUME_CHANGEABLE

    tagged = {"schedule.epochs", "schedule.milestones", "trainer.eval_every", "trainer.log_every", "trainer.progress",
              "trainer.out", "trainer.device", "trainer.threads", "trainer.precision", "trainer.channels_last",
              "trainer.cudnn_benchmark", "data.root", "data.download", "data.eval_batch_size", "data.test_subset",
              "data.workers", "trainer.members", "trainer.step", "import_digests", "trainer.loggers",
              "trainer.loggers_required", "trainer.tracker_project"}
    assert set(RESUME_CHANGEABLE) == tagged and len(RESUME_CHANGEABLE) == len(tagged)


def test_a_resume_may_change_a_resumable_key_and_no_other(finished_run):
    from peerkd.training.run_folder import resume_changes

    state = load_checkpoint(finished_run / CHECKPOINT)
    own = ("trainer.log_every=1",)  # the finished run's own override
    assert resume_changes(state, _config(overrides=own + ("data.workers=0", "trainer.precision=fp32")),
                          finished_run) == {"data.workers": [8, 0], "trainer.precision": ["auto", "fp32"]}
    # what the weights were trained with; the seed (a placement key to the report's grouping) is no resumable key
    for override, shown in (("data.batch_size=16", "data.batch_size (32 -> 16)"), ("seed=4", "seed (0 -> 4)"),
                            ("method.models=[resnet20]", "method.models (['resnet8'] -> ['resnet20'])")):
        with pytest.raises(RunError, match=re.escape(f"trained with another config: {shown}.")):
            resume_changes(state, _config(overrides=own + (override,)), finished_run)


def test_resume_overrides_are_allowed_recorded_and_config_yaml_is_kept(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    config_yaml = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--set", "schedule.epochs=2", "--set", "trainer.eval_every=2",
                     "--device", "cpu"]) == 0
    assert (run / "config.yaml").read_text() == config_yaml  # the config the run started with
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changed"] == {"schedule.epochs": [1, 2], "trainer.device": ["auto", "cpu"],
                                     "trainer.eval_every": [1, 2]}
    assert history[1]["epoch"] == 1 and history[1]["global_step"] == 4
    assert load_checkpoint(run / CHECKPOINT)["config"]["schedule"]["epochs"] == 2  # what the weights were trained by


def test_resume_drops_the_logs_past_the_checkpoint(finished_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _copy(finished_run, tmp_path)

    def crash(trainer):
        if trainer.global_step == 7:  # epoch 2, step 3 (the checkpoint is at step 4)
            raise KeyboardInterrupt  # a kill: nothing saved, steps 5 and 6 logged past the checkpoint

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(epochs=2, overrides=("trainer.log_every=1",)), run_dir=run, resume=True, on_step=crash).fit()
    before = [json.loads(line)["global_step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert before == [1, 2, 3, 4, 4, 5, 6]
    Trainer(_config(epochs=2, overrides=("trainer.log_every=1",)), run_dir=run, resume=True).fit()
    steps = [json.loads(line)["global_step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]
    events = EventAccumulator(str(run))
    events.Reload()
    logged = [e.step for e in events.Scalars("train/lr")]
    assert logged == [1, 2, 3, 4, 5, 6, 7, 8]  # the crashed session's steps 5 and 6 appear once


# ------------------------------------------------------------------------------------ unwritable, disk full, umask

def test_an_unwritable_output_is_reported_before_any_set_up(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run's parent folder should be\n")
    config = tmp_path / "c.yaml"
    # data that is missing: today's order would report the data (after set-up work) instead of the folder
    config.write_text(_config(overrides=("data.dataset=cifar100", f"data.root={tmp_path / 'empty'}",
                                         "data.download=false")).to_yaml())
    capsys.readouterr()
    assert cli.main(["train", "-c", str(config), "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the run folder {blocker / 'run'}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_output_is_reported(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(RunError, match="cannot write the run folder"):
            Trainer(_config(), run_dir=folder / "run")
    finally:
        folder.chmod(0o755)


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    from peerkd.data import DataError

    with pytest.raises(DataError):
        Trainer(_config(overrides=("data.dataset=cifar100", f"data.root={tmp_path / 'empty'}",
                                   "data.download=false")), run_dir=tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()


def test_disk_full_is_one_line_and_the_last_checkpoint_is_kept(finished_run, tmp_path, monkeypatch, capsys):
    import peerkd.training.checkpoint as checkpoint_module

    run = _copy(finished_run, tmp_path)
    real_fsync = os.fsync

    def full_for_checkpoints(fd):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the checkpoint's writes")
    monkeypatch.setattr(checkpoint_module.os, "fsync", full_for_checkpoints)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--set", "schedule.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"no space left on the device of {run}" in err and "checkpoint.pt: 1 epochs done) is kept" in err
    monkeypatch.setattr(checkpoint_module.os, "fsync", real_fsync)
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_every_file_of_a_run_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        run = tmp_path / "run"
        train(_config(), run_dir=run)
        Trainer(_config(epochs=2), run_dir=run, resume=True).fit()  # checkpoint.prev.pt, history, truncation
        assert cli.main(["eval", str(run), "--device", "cpu"]) == 0  # eval.json
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in run.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
    assert {"checkpoint.pt", "checkpoint.prev.pt", "summary.json", "environment.json", "eval.json", "history.jsonl",
            LOCK_FILE} <= set(modes)
