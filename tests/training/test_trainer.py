"""The training loop: run folder, exact resume, SIGTERM, non-finite loss, corrupt checkpoints, KD from a run."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from peerkd.config import build_config
from peerkd.training.checkpoint import RunError, load_checkpoint, load_run
from peerkd.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, learning_rate, train

DML = {"name": "dml", "models": ["resnet8", "resnet8"]}


def test_run_folder_contents(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(DML, epochs=2, train_size=256), run_dir=run)
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "git_sha" in env
    from peerkd.training.checkpoint import processor_name

    assert env["processor"] == processor_name() and "logical cores" in env["processor"]  # results depend on the CPU
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval"}
    for key in ("peer0", "peer1", "ensemble"):
        for part in ("last", "best"):
            assert {"top1", "top5", "nll", "ece", "aurc"} <= set(summary["keys"][key][part])
    assert summary["diversity"]["peers"] > 0
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_stored_metrics_keep_their_layout(tmp_path):
    """summary.json and the eval records of metrics.jsonl: predict keys beside one "diversity" block of
    {group: distance, group_agreement: kappa}, as peerkd report and older run folders have them."""
    run = tmp_path / "run"
    summary = train(tiny_config(DML, epochs=2, train_size=128), run_dir=run)
    assert list(summary) == ["name", "method", "epochs", "last_epoch", "eval_split", "keys", "diversity", "params"]
    assert summary["last_epoch"] == 1 and list(summary["keys"]) == ["peer0", "peer1", "ensemble"]
    assert set(summary["diversity"]) == {"peers", "peers_agreement"}
    assert -1.0 <= summary["diversity"]["peers_agreement"] <= 1.0
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1]
    assert summary["eval_split"] == "test" and {r["split"] for r in evals} == {"test"}  # data.eval_split's default
    last = evals[-1]["metrics"]
    assert list(last) == ["peer0", "peer1", "ensemble", "diversity"] and last["diversity"] == summary["diversity"]
    assert all(last[key] == summary["keys"][key]["last"] for key in summary["keys"])
    assert load_checkpoint(run / "checkpoint.pt")["history"]["last"] == dict(last, epoch=1)  # resume reads it


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(DML, epochs=1, train_size=128), run_dir=run)
    with pytest.raises(RunError, match="already holds a run"):
        Trainer(tiny_config(DML, epochs=1, train_size=128), run_dir=run)
    with pytest.raises(RunError, match="holds no checkpoint.pt"):
        Trainer(tiny_config(DML, epochs=1, train_size=128), run_dir=tmp_path / "other", resume=True)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    config = tiny_config(DML, epochs=3, train_size=256)
    straight = train(config, run_dir=tmp_path / "straight")

    def stop_mid_epoch(trainer):
        if trainer.global_step == 11:  # epoch 2 (8 steps per epoch), step 3: mid-epoch
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted, match="--resume"):
        Trainer(tiny_config(DML, epochs=3, train_size=256), run_dir=tmp_path / "cut", on_step=stop_mid_epoch).fit()
    resumed = Trainer(tiny_config(DML, epochs=3, train_size=256), run_dir=tmp_path / "cut", resume=True).fit()
    assert resumed["keys"] == straight["keys"]
    a = load_run(tmp_path / "straight").method.state_dict()
    b = load_run(tmp_path / "cut").method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config(DML, epochs=50, train_size=512).to_yaml())
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "peerkd", "train", "-c", str(config), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoint.pt").exists():
        time.sleep(0.2)
    assert (run / "checkpoint.pt").exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "checkpoint saved" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoint.pt")
    assert 1 <= state["epoch"] < 50
    resumed = subprocess.run([sys.executable, "-m", "peerkd", "train", "--resume", str(run),
                              "--set", "schedule.epochs=" + str(state["epoch"] + 1)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "summary.json").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(DML, epochs=1, train_size=128), run_dir=run)
    good = load_checkpoint(run / "checkpoint.pt")

    def poison(trainer):
        if trainer.epoch == 1 and trainer.step_in_epoch == 1:
            with torch.no_grad():
                next(trainer.method.parameters()).fill_(float("nan"))

    trainer = Trainer(tiny_config(DML, epochs=2, train_size=128), run_dir=run, resume=True, on_step=poison)
    with pytest.raises(NonFiniteLossError, match="non-finite.*last good checkpoint"):
        trainer.fit()
    kept = load_checkpoint(run / "checkpoint.pt")
    assert kept["epoch"] == good["epoch"] == 1
    assert all(torch.equal(kept["method"][k], good["method"][k]) for k in good["method"])


def test_corrupt_checkpoint_is_reported_by_the_cli(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(DML, epochs=1, train_size=128), run_dir=run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for argv in (["train", "--resume", str(run)], ["eval", str(run)]):
        result = subprocess.run([sys.executable, "-m", "peerkd", *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert "checkpoint" in result.stderr and "unreadable" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_is_reported_by_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "peerkd", "train", "-c", "configs/cifar100/dml_resnet32.yaml",
                             "--data-dir", str(tmp_path), "--set", "data.download=false", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2
    assert "cifar100 not found" in result.stderr and "train.npz" in result.stderr
    assert not (tmp_path / "r").exists()


def test_kd_student_learns_from_a_teacher_run_and_exports(tmp_path):
    teacher_run = tmp_path / "teacher"
    train(tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=3), run_dir=teacher_run)
    kd = {"name": "kd", "student": "resnet8", "teacher_run": str(teacher_run), "teacher_key": "peer0",
          "temperature": 4.0, "alpha": 0.9}
    summary = train(tiny_config(kd, epochs=3), run_dir=tmp_path / "student")
    teacher_top1 = json.loads((teacher_run / "summary.json").read_text())["keys"]["peer0"]["last"]["top1"]
    assert summary["keys"]["teacher"]["last"]["top1"] == pytest.approx(teacher_top1)
    assert summary["keys"]["student"]["last"]["top1"] > 40.0  # chance is 25 %
    # the student run stays usable after the teacher's folder is gone
    for path in teacher_run.iterdir():
        path.unlink()
    teacher_run.rmdir()
    run = load_run(tmp_path / "student")
    student = run.export("student")
    saved = build_config(load_checkpoint(tmp_path / "student" / "checkpoint.pt")["config"])  # as `--resume` does
    resumed = Trainer(saved, run_dir=tmp_path / "student", resume=True)
    resumed.restore()
    assert resumed.evaluate().keys["teacher"]["top1"] == pytest.approx(teacher_top1)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(student(x), run.method.predict(x)["student"])


def test_kd_without_a_teacher_run_is_a_config_error(tmp_path):
    from peerkd.config import ConfigError

    with pytest.raises(ConfigError, match="method.teacher_run"):
        Trainer(tiny_config({"name": "kd", "teacher_run": str(tmp_path / "missing")}), run_dir=tmp_path / "r")


def test_learning_rate_schedules():
    config = tiny_config(DML, epochs=10, overrides=("schedule.kind=multistep", "schedule.milestones=[4, 8]",
                                                    "optim.lr=0.1"))
    assert learning_rate(config, 0, 0, 10) == pytest.approx(0.1)
    assert learning_rate(config, 4, 0, 10) == pytest.approx(0.01)
    assert learning_rate(config, 9, 5, 10) == pytest.approx(0.001)
    config = tiny_config(DML, epochs=10, overrides=("schedule.kind=cosine", "schedule.warmup_epochs=2",
                                                    "optim.lr=0.1"))
    assert learning_rate(config, 0, 0, 10) == pytest.approx(0.1 / 20)  # first of 20 warm-up steps
    assert learning_rate(config, 1, 9, 10) == pytest.approx(0.1)
    assert learning_rate(config, 6, 0, 10) == pytest.approx(0.05)  # half-way through the 8 cosine epochs


def test_export_matches_inside_the_method(tmp_path):
    train(tiny_config(DML, epochs=1, train_size=128), run_dir=tmp_path / "run")
    run = load_run(tmp_path / "run")
    x = torch.randn(3, 3, 32, 32)
    preds = run.method.predict(x)
    for key in ("peer0", "peer1"):
        assert torch.allclose(run.export(key)(x), preds[key])
    with pytest.raises(KeyError, match="exportable"):
        run.export("peer7")


def test_kd_loss_weights_by_hand(tmp_path):
    """(1 - alpha) CE + alpha T^2 KL by default; ce_weight replaces 1 - alpha (KDCL eq. 2: CE + lambda T^2 KL)."""
    import math

    from tests.helpers import random_batch, tiny_task
    from peerkd.config import build_config
    from peerkd.methods import build_method

    teacher_run = tmp_path / "teacher"
    train(tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=1, train_size=128), run_dir=teacher_run)
    task = tiny_task(num_classes=4)
    batch = random_batch(task)
    for extra, ce_w, kl_w in (({"alpha": 0.3}, 0.7, 0.3), ({"alpha": 1.0, "ce_weight": 1.0}, 1.0, 1.0)):
        options = build_config({"method": {"name": "kd", "student": "resnet8", "teacher_run": str(teacher_run),
                                           "temperature": 2.0, **extra}}).method.options
        method = build_method("kd", options, task).eval()
        with torch.no_grad():
            loss = float(method(batch).loss)
            s, t = method.student[0](batch.x), method.teacher(batch.x)
        ce = -sum(math.log(torch.softmax(s[i], 0)[batch.y[i]].item()) for i in range(len(batch.y))) / len(batch.y)
        kl = 0.0
        for i in range(len(batch.y)):
            p, q = torch.softmax(t[i] / 2, 0).tolist(), torch.softmax(s[i] / 2, 0).tolist()
            kl += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
        kl = kl / len(batch.y) * 4.0  # T^2
        assert loss == pytest.approx(ce_w * ce + kl_w * kl, rel=1e-5)
