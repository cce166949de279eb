"""A 2-process DDP run under torchrun on CPU (gloo), the CLI's list and eval, and a short run on real CIFAR-100."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SHARED_CIFAR100, tiny_config, torchrun_train
from peerkd.config import build_config
from peerkd.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run_under_torchrun(tmp_path):
    run = tmp_path / "run"
    result = torchrun_train(tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=2, train_size=512),
                            run)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert summary["keys"]["ensemble"]["last"]["top1"] > 35.0  # chance is 25 %
    assert result.stdout.count("run folder:") == 1  # rank 0 alone reports and writes
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "eval" for r in records) == 2  # one writer: no duplicated lines
    environment = json.loads((run / "environment.json").read_text())  # what peerkd report's columns read
    assert (environment["world_size"], environment["precision"]) == (2, "fp32")


def test_cli_list_and_eval(tmp_path):
    out = subprocess.run([sys.executable, "-m", "peerkd", "list", "methods"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "dml" in out.stdout and "vanilla" in out.stdout and "kd" in out.stdout
    out = subprocess.run([sys.executable, "-m", "peerkd", "list", "models"], capture_output=True, text=True,
                         timeout=60)
    assert "resnet110" in out.stdout and "wrn16_2" in out.stdout
    run = tmp_path / "run"
    summary = train(tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=1, train_size=128), run_dir=run)
    out = subprocess.run([sys.executable, "-m", "peerkd", "eval", str(run), "--device", "cpu"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    evaluated = json.loads((run / "eval.json").read_text())["metrics"]
    assert evaluated["peer0"]["top1"] == pytest.approx(summary["keys"]["peer0"]["last"]["top1"])


@pytest.mark.skipif(not SHARED_CIFAR100.is_dir() and not os.environ.get("CI"),
                    reason="../shared/data/cifar100 is absent (required when CI is set)")
def test_short_real_run_on_a_cifar100_subset(tmp_path):
    assert SHARED_CIFAR100.is_dir(), f"CI needs the real CIFAR-100 copy at {SHARED_CIFAR100}"
    config = build_config({
        "name": "cifar100-subset",
        "data": {"dataset": "cifar100", "root": str(SHARED_CIFAR100), "train_subset": 2000, "test_subset": 1000,
                 "batch_size": 64, "eval_batch_size": 500},
        "method": {"name": "dml", "models": ["resnet8", "resnet8"]},
        "schedule": {"epochs": 2, "kind": "cosine"},
        "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "threads": 2},
    })
    summary = train(config, run_dir=tmp_path / "run")
    # 2,000 images of 100 classes for two epochs: far from converged, but well above the 1 % of chance
    assert summary["keys"]["ensemble"]["last"]["top1"] > 3.0
    assert summary["keys"]["ensemble"]["last"]["top5"] > 10.0
    labels = np.load(SHARED_CIFAR100 / "test.npz")["labels"]
    assert labels.shape == (10000,) and labels.max() == 99


def test_quickstart_is_the_measured_noisy_label_setting():
    """RESULTS.md's 3-seed quickstart table was measured at exactly these settings (1,000 images, 40 % flipped labels,
    easier generated data, 60 epochs): a change to any of them makes that table stale."""
    from peerkd.cli import QUICKSTART

    config = build_config({**QUICKSTART, "method": {"name": "vanilla", "models": ["resnet8"]}})
    synthetic = config.data.synthetic
    assert (synthetic.train_size, synthetic.test_size, synthetic.num_classes) == (1000, 2000, 10)
    assert (synthetic.label_noise, synthetic.noise, synthetic.distractor, synthetic.seed) == (0.4, 0.3, 0.4, 0)
    assert (config.schedule.epochs, config.schedule.kind, config.schedule.warmup_epochs) == (60, "cosine", 1)
    assert (config.data.batch_size, config.optim.lr, config.seed) == (64, 0.1, 0)


def test_quickstart_runs_from_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "peerkd", "train", "--out", str(tmp_path / "qs"),
                             "--set", "schedule.epochs=1", "--set", "data.synthetic.train_size=640",
                             "--set", "data.synthetic.test_size=200"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quickstart result" in result.stdout
    assert "40 % of their labels flipped" in result.stdout and "fair: both runs see the same" in result.stdout
    for row in ("vanilla resnet8", "DML peer0", "DML peer1", "DML ensemble"):
        assert row in result.stdout
    assert (tmp_path / "qs" / "dml" / "summary.json").is_file()


def test_cli_plots_reliability_and_diversity(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    train(tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=2, train_size=128), run_dir=run)
    for argv in (["plot", "reliability", str(run), "--key", "peer0"],
                 ["plot", "diversity", str(run), "--group", "peers", "-o", str(tmp_path / "div.png")]):
        out = subprocess.run([sys.executable, "-m", "peerkd", *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        png = Path(out.stdout.strip().splitlines()[-1])
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
