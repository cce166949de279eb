"""Every failure a message, not a traceback (issue 16): ranges checked in the schema before any work, signals and
divergence in the quickstart, and the CLI's answers to a folder of runs, a missing diversity group and --out."""
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config
from peerkd.cli import main
from peerkd.config import ConfigError, build_config, load_config
from peerkd.data import DataError
from peerkd.training.checkpoint import load_checkpoint
from peerkd.training.trainer import NonFiniteLossError, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
VANILLA = {"name": "vanilla", "models": ["resnet8"]}


# ------------------------------------------------------------------------------------ ranges, before any work

@pytest.mark.parametrize("override, message", [
    ("trainer.device=tpu", "trainer.device: 'tpu' is not a device"),
    ("trainer.device=cuda:x", "trainer.device: 'cuda:x' is not a device"),
    ("optim.momentum=-0.9", "optim.momentum: must not be negative"),
    ("optim.momentum=0", "optim.nesterov: Nesterov momentum needs optim.momentum > 0"),
    ("optim.weight_decay=-5e-4", "optim.weight_decay: must not be negative"),
    ("data.crop_padding=-4", "data.crop_padding: must not be negative"),
    ("data.train_subset=-10", "data.train_subset: must be positive"),
    ("data.test_subset=-10", "data.test_subset: must be positive"),
    ("trainer.threads=-1", "trainer.threads: must not be negative"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs: must not be negative"),
    ("seed=-1", "seed: must not be negative"),
    ("optim.lr=nan", "optim.lr: expected a finite number"),
    ("optim.lr=.inf", "optim.lr: expected a finite number"),
])
def test_out_of_range_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({"method": VANILLA}, [override])


def test_valid_devices_and_plain_sgd_still_pass():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert build_config({}, [f"trainer.device={device}"]).trainer.device == device
    assert build_config({}, ["optim.momentum=0", "optim.nesterov=false"]).optim.momentum == 0


def temperature_fields(options_cls) -> list[str]:
    return [f.name for f in dataclasses.fields(options_cls) if f.name.split("_")[-1] == "temperature"]


def test_every_methods_temperature_must_be_positive():
    from peerkd.core.registry import method_class, method_names

    checked = 0
    for name in method_names():
        for field in temperature_fields(method_class(name).Options):
            for bad in (0, -1):
                with pytest.raises(ConfigError, match=f"method.{field}: a softmax temperature must be positive"):
                    build_config({"method": {"name": name, field: bad}})
            checked += 1
    assert checked >= 14  # every distilling method has one (pskd_ml two); none escapes the naming convention


def test_a_duplicated_yaml_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.1}\nschedule: {epochs: 3}\noptim: {lr: 0.2}\n")
    with pytest.raises(ConfigError, match="key 'optim' is given twice"):
        load_config(path)
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_config(path)
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        build_config({}, ["optim={lr: 0.1, lr: 0.2}"])


@pytest.mark.parametrize("key", ["train_subset", "test_subset"])
def test_an_oversize_subset_is_refused_before_the_run_folder_exists(tmp_path, key):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"data.{key}: 100000 asked for, but synthetic has"):
        Trainer(tiny_config(VANILLA, epochs=1, train_size=128, overrides=(f"data.{key}=100000",)), run_dir=run)
    assert not run.exists()


def test_float_labels_in_an_npz_are_refused_not_truncated(tmp_path):
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=images, labels=np.array([0.0, 1.7, 2.0, 3.0]))
    np.savez(tmp_path / "test.npz", images=images, labels=np.array([0, 1, 2, 3]))
    config = build_config({"data": {"dataset": "cifar10", "root": str(tmp_path)}})
    from peerkd.data.datasets import load_dataset

    with pytest.raises(DataError, match="'labels' of dtype float64; class labels must be integers"):
        load_dataset(config.data)


def test_cli_refuses_a_bad_value_with_exit_2_before_the_run_folder(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config(VANILLA, epochs=1, train_size=128).to_yaml())
    run = tmp_path / "run"
    assert main(["train", "-c", str(config), "--out", str(run), "--set", "data.crop_padding=-4"]) == 2
    assert "config error: data.crop_padding: must not be negative" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "peerkd", "train", "-c", str(config), "--out", str(run),
                             "--device", "tpu"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config error: trainer.device: 'tpu'" in result.stderr and "Traceback" not in result.stderr
    assert not run.exists()


# ------------------------------------------------------------------------------- divergence and signals

SMALL_TEST = ("data.synthetic.test_size=64",)  # images evaluated: a few keep these runs quick

def test_divergence_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path):
    def poison(trainer):
        if trainer.step_in_epoch == 1:
            with torch.no_grad():
                next(trainer.method.parameters()).fill_(float("nan"))

    config = tiny_config(VANILLA, epochs=2, train_size=64, overrides=SMALL_TEST)
    trainer = Trainer(config, run_dir=tmp_path / "run", on_step=poison)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    assert "before any checkpoint was written: there is nothing to resume" in str(err.value)
    assert "is kept" not in str(err.value) and not (tmp_path / "run" / "checkpoint.pt").exists()


QUICK = ["--set", "data.synthetic.train_size=128", "--set", "data.synthetic.test_size=64", "--set",
         "trainer.threads=1"]  # 2 steps per epoch: the first checkpoint comes within seconds


def _start_quickstart(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "peerkd", "train", "--out", str(out), *QUICK, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_quickstart_saves_and_exits_cleanly_on_ctrl_c_and_sigterm(tmp_path, signum, code):
    proc = _start_quickstart(tmp_path / "qs", "--set", "schedule.epochs=50")
    checkpoint = tmp_path / "qs" / "vanilla" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.1)
    assert checkpoint.exists(), proc.communicate()[1][-2000:]
    before = load_checkpoint(checkpoint)["global_step"]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "checkpoint saved: continue with `peerkd train --resume" in err
    saved = load_checkpoint(checkpoint)
    assert saved["global_step"] >= before  # the steps run since the last epoch's checkpoint are kept too


def test_quickstart_reports_a_nan_in_one_line(tmp_path):
    proc = _start_quickstart(tmp_path / "qs", "--set", "schedule.epochs=1", "--set", "optim.lr=1e30",
                             "--set", "schedule.warmup_epochs=0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "non-finite" in err and "nothing to resume" in err


def test_one_line_per_epoch_without_a_progress_bar(tmp_path, capsys):
    train(tiny_config(VANILLA, epochs=2, train_size=64, overrides=SMALL_TEST), run_dir=tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    pattern = r"epoch {}/2  loss \d+\.\d{{4}}  top-1 \d+\.\d\d % \(peer0\)  \d+ images/s  time left \d:\d\d:\d\d"
    assert len(lines) == 2 and all(re.fullmatch(pattern.format(i + 1), line) for i, line in enumerate(lines)), lines


# ----------------------------------------------------------------------------------------- the CLI's answers

def _fake_runs(parent: Path, *names: str) -> None:
    for name in names:
        (parent / name).mkdir(parents=True)
        (parent / name / "checkpoint.pt").write_bytes(b"")


def test_eval_of_a_folder_of_runs_names_the_runs_inside(tmp_path, capsys):
    _fake_runs(tmp_path / "qs", "vanilla", "dml")
    assert main(["eval", str(tmp_path / "qs")]) == 2
    err = capsys.readouterr().err
    assert "holds the runs dml/, vanilla/" in err and f"peerkd eval {tmp_path / 'qs' / 'dml'}" in err
    assert "--resume" not in err


def test_resume_refuses_to_move_a_run_with_out(tmp_path, capsys):
    _fake_runs(tmp_path, "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--out", str(tmp_path / "other")]) == 2
    assert "--out cannot move a run being resumed" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def _diversity_run(run: Path) -> None:
    run.mkdir()
    records = [{"kind": "eval", "epoch": e, "metrics": {"diversity": {"peers": 0.1 * (e + 1)}}} for e in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_diversity_lists_the_groups_and_writes_into_the_run_folder(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    _diversity_run(run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["plot", "diversity", str(run), "--group", "branches"]) == 2
    assert "no diversity group 'branches'; its groups are: peers" in capsys.readouterr().err
    assert not list(elsewhere.iterdir()) and not (run / "diversity.png").exists()
    assert main(["plot", "diversity", str(run)]) == 0
    assert (run / "diversity.png").is_file() and not list(elsewhere.iterdir())


# ------------------------------------------------------------------------------------------- newcomer snags

def test_list_methods_prints_whole_sentences(capsys):
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kdcl = next(line for line in lines if line.startswith("kdcl "))
    assert kdcl.rstrip().endswith("(ICL).")
    assert all(line.rstrip().endswith(".") for line in lines), [ln for ln in lines if not ln.rstrip().endswith(".")]


def test_readme_model_count_is_the_registry_count():
    from peerkd.models import model_names

    stated = re.search(r"\*\*Models\*\* \((\d+)\)", (ROOT / "README.md").read_text())
    assert stated and int(stated.group(1)) == len(model_names())


@pytest.mark.skipif(shutil.which("pytest") is None, reason="no pytest console script on PATH")
def test_plain_pytest_collects_the_modules_that_import_tests(tmp_path):
    """The README's `pytest -q`, not `python -m pytest` (which puts the current folder on sys.path)."""
    result = subprocess.run([shutil.which("pytest"), "-q", "--collect-only", "-p", "no:cacheprovider",
                             "tests/training/test_step.py"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "No module named 'tests'" not in result.stdout
