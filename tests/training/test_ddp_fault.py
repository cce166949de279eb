"""A fault in a distributed run: one of two gloo ranks killed mid-epoch under ``torchrun --max-restarts 1``; the
restarted workers resume from the last checkpoint and end with the summary of an uninterrupted run."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import tiny_config

WORKER = Path(__file__).resolve().parent / "ddp_fault_worker.py"


def _torchrun(config, run_dir, **env):
    tree = config.to_dict()
    tree["trainer"]["threads"] = 1
    path = Path(run_dir).parent / f"{Path(run_dir).name}.yaml"
    path.write_text(json.dumps(tree))  # JSON is YAML
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--max-restarts", "1", "--monitor-interval", "0.1", str(WORKER), "train", "-c",
                             str(path), "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parents[2]), **env))


def test_a_rank_killed_mid_epoch_restarts_from_the_checkpoint_with_the_same_summary(tmp_path):
    # 256 images, 32 per step over both ranks: 8 steps an epoch; rank 1 dies at step 11 (epoch 2, step 3)
    config = tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=2, train_size=256)
    straight = _torchrun(config, tmp_path / "straight")
    faulted = _torchrun(config, tmp_path / "faulted", PEERKD_TEST_KILL_RANK="1", PEERKD_TEST_KILL_STEP="11")
    out_straight, err_straight = straight.communicate(timeout=600)
    out, err = faulted.communicate(timeout=600)
    assert straight.returncode == 0, err_straight[-3000:]
    assert faulted.returncode == 0, err[-3000:]
    assert "torchrun restart 1: resuming" in err  # it did die and come back
    history = [json.loads(line) for line in (tmp_path / "faulted" / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["epoch"], h.get("torchrun_restart")) for h in history] == [("start", 0, None),
                                                                                       ("resume", 1, 1)]
    assert (json.loads((tmp_path / "faulted" / "summary.json").read_text())
            == json.loads((tmp_path / "straight" / "summary.json").read_text()))
    steps = [json.loads(line).get("global_step") for line in (tmp_path / "faulted" / "metrics.jsonl").open()]
    assert steps == [json.loads(line).get("global_step") for line in (tmp_path / "straight" / "metrics.jsonl").open()]
