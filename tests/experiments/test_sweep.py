"""peerkd sweep end to end on generated data: 2 configs x 3 seeds with --jobs 2, stopped in the middle and started
again (finished runs skipped, the stopped ones continued, summaries equal to uninterrupted runs; a run that fails
does not stop the others), the submitit path requeued through its local executor, one run across two torchrun
"nodes" on 127.0.0.1 equal to one node of the same world size, and bad input."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peerkd.cli import main
from peerkd.config import load_config
from peerkd.experiments.sweep import plan, run_state
from peerkd.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
TINY = {"data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 200,
                 "synthetic": {"num_classes": 4, "train_size": 128, "test_size": 64, "noise": 0.3,
                               "distractor": 0.4}},
        "schedule": {"epochs": 3, "kind": "cosine"}, "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "log_every": 2, "threads": 1}}


def write_config(folder: Path, name: str, method: dict, **extra) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TINY, "method": method, **extra}))
    return path


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def sweep_process(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "peerkd", "sweep", *map(str, argv)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reference(config: Path, seed: int, run_dir: Path) -> dict:
    """The same run trained straight through, in this process."""
    return train(load_config(config, [f"seed={seed}"]), run_dir=run_dir)


def test_sweep_stopped_in_the_middle_and_rerun_equals_an_uninterrupted_sweep(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    dml = write_config(configs, "dml", {"name": "dml", "models": ["resnet8", "resnet8"]})
    vanilla = write_config(configs, "vanilla", {"name": "vanilla", "models": ["resnet8"]})
    out = tmp_path / "runs"
    specs = plan([str(configs)], [0, 1, 2], out=str(out))
    assert [s.name for s in specs] == [f"{c}-s{s}" for c in ("dml", "vanilla") for s in (0, 1, 2)]
    proc = sweep_process(configs, "--seeds", "0,1,2", "--jobs", "2", "--out", out)
    deadline = time.time() + 240
    seen = {s.name: "new" for s in specs}
    while time.time() < deadline and proc.poll() is None:
        states = {s.name: run_state(s) for s in specs}
        fresh = [n for n, state in states.items() if state == "partial" and seen[n] == "new"]
        if "done" in states.values() and fresh:  # a run is done and another has just saved its first epoch
            proc.send_signal(signal.SIGTERM)
            break
        seen = states
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stdout + stderr
    assert "[sweep] stopped:" in stdout and "run the same command again" in stdout
    before = {s.name: run_state(s) for s in specs}
    assert "done" in before.values() and "partial" in before.values(), before

    assert "new" in before.values(), before
    broken = next(name for name, state in reversed(before.items()) if state == "new")
    (out / broken).mkdir()
    (out / broken / "checkpoint.pt").write_bytes(b"not a checkpoint")  # this run now fails when continued

    rerun = sweep_process(configs, "--seeds", "0,1,2", "--jobs", "2", "--out", out)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 1, stdout + stderr  # a run failed, the others finished
    for name, state in before.items():
        if state == "done":
            assert f"{name}: finished before, skipped" in stdout
        elif state == "partial" or name == broken:
            assert f"{name}: continuing from its checkpoint" in stdout
    assert stdout.count("FAILED (exit 2)") == 1 and f"{broken}: FAILED (exit 2)" in stdout
    assert "unreadable" in stdout and "[sweep] finished: 5/6 done, 1 failed" in stdout
    summaries = {}
    for spec in specs:
        if spec.name == broken:
            continue
        assert run_state(spec) == "done", spec.name
        summaries[spec.name] = json.loads((Path(spec.run_dir) / "summary.json").read_text())
        straight = reference(dml if spec.name.startswith("dml") else vanilla, spec.seed,
                             tmp_path / "straight" / spec.name)
        assert summaries[spec.name]["keys"] == straight["keys"], spec.name
    # the seed changes the run (weights, data order, augmentation), the data stay the same
    assert summaries["dml-s0"]["keys"] != summaries["dml-s1"]["keys"]
    saved = [yaml.safe_load((out / f"dml-s{s}" / "config.yaml").read_text()) for s in (0, 1)]
    assert saved[0]["seed"] == 0 and saved[1]["seed"] == 1 and saved[0]["data"] == saved[1]["data"]


def test_bad_sweep_input_is_one_line_and_exit_2(capsys, tmp_path):
    write_config(tmp_path, "a", {"name": "vanilla", "models": ["resnet8"]})
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "a", **TINY}))  # same name as a.yaml
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"name": "t", "schedul": {"epochs": 1}}))
    cases = {(str(tmp_path / "nope.yaml"),): "does not exist",
             (str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")): "both have name 'a'",
             (str(tmp_path / "typo.yaml"),): "did you mean 'schedule'",
             (str(tmp_path / "a.yaml"), "--seeds", "x"): "--seeds",
             (str(tmp_path / "a.yaml"), "--set", "optim.lr=-1"): "optim.lr"}
    for argv, message in cases.items():
        code = main(["sweep", *argv, "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "runs").exists()  # nothing started
    assert main(["sweep", str(tmp_path / "a.yaml"), "--seeds", "0-2", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed] == [[f"a-s{s}", "new"] for s in (0, 1, 2)]
    assert "--set seed=2 --out" in listed[2] and not (tmp_path / "r").exists()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_submitit_job_requeued_on_its_signal_resumes_exactly(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from peerkd.experiments.slurm import SlurmOptions, submit

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the job's process imports this checkout's peerkd
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = write_config(tmp_path, "dml", {"name": "dml", "models": ["resnet8", "resnet8"]},
                          schedule={"epochs": 8, "kind": "cosine"})
    (spec,) = plan([str(config)], [3], out=str(tmp_path / "runs"))
    ((_, job),) = submit([spec], SlurmOptions(gpus=0, time_min=10), folder=tmp_path / "submitit", cluster="local")
    deadline = time.time() + 240
    while time.time() < deadline and run_state(spec) != "partial":
        time.sleep(0.05)
    assert run_state(spec) == "partial", job.stderr()
    (task,) = _children(job._process.pid)  # the controller's one task: the process submitit signals on SLURM
    os.kill(task, signal.SIGUSR2)
    summary = job.result()
    log = job.stdout()
    assert "requeued" in log and log.count("peerkd job:") == 3  # start, requeue note, continued start
    continued = [line for line in log.splitlines() if line.startswith("peerkd job:")][-1]
    assert "--resume" in continued
    straight = reference(config, 3, tmp_path / "straight")
    assert summary["keys"] == straight["keys"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_run_on_two_torchrun_nodes_equals_one_node_of_two_processes(tmp_path):
    config = write_config(tmp_path, "dml", {"name": "dml", "models": ["resnet8", "resnet8"]},
                          schedule={"epochs": 2, "kind": "cosine"})
    one_node = sweep_process(config, "--nproc-per-run", "2", "--out", tmp_path / "one")
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--rdzv_id", "peerkd-test", "--local_addr", "127.0.0.1", "-m", "peerkd", "train",
                               "-c", str(config), "--out", str(tmp_path / "two" / f"node{rank}")],
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(log[-2000:] for log in logs)
    stdout, stderr = one_node.communicate(timeout=300)
    assert one_node.returncode == 0, stdout + stderr
    assert "torch.distributed.run --standalone --nproc_per_node 2" in (tmp_path / "one" / "dml-s0" / "sweep.log"
                                                                     ).read_text()
    written = [p for p in (tmp_path / "two").glob("node*/summary.json")]
    assert len(written) == 1  # global rank 0 alone writes, on whichever node it landed
    two = json.loads(written[0].read_text())
    one = json.loads((tmp_path / "one" / "dml-s0" / "summary.json").read_text())
    assert two["keys"] == one["keys"]


def test_local_executor_pins_gpus_limits_concurrency_and_reports_a_failure(tmp_path, monkeypatch):
    from peerkd.experiments.sweep import RunSpec, run_local

    config = write_config(tmp_path, "a", {"name": "vanilla", "models": ["resnet8"]})
    specs = plan([str(config)], [0, 1, 2, 3, 4], out=str(tmp_path / "runs"))
    # a stand-in for peerkd train: prints the GPUs it sees, and seed 4 fails
    script = ("import os, sys, time; print('sees', os.environ.get('CUDA_VISIBLE_DEVICES')); time.sleep(0.3); "
              "sys.exit(3 if sys.argv[1] == '4' else 0)")
    monkeypatch.setattr(RunSpec, "train_argv", lambda self, nproc=1: [sys.executable, "-c", script, str(self.seed)])
    lines = []
    result = run_local(specs, jobs=2, gpus=["0", "1", "2", "3"], nproc=2, say=lines.append)
    assert result.exit_code == 1 and result.failed == ["a-s4"] and len(result.done) == 4
    seen = {(Path(s.run_dir) / "sweep.log").read_text().split("sees ")[1].split()[0] for s in specs}
    assert seen == {"0,1", "2,3"}  # each run holds two of the four GPUs
    counts = [line for line in lines if line.startswith("[sweep]") and "running" in line]
    assert all(int(line.split(", ")[1].split()[0]) <= 1 for line in counts)  # <= 2 at once, one just ended
    assert any("a-s4: FAILED (exit 3)" in line for line in lines)
    assert lines[-1] == "[sweep] finished: 4/5 done, 1 failed (a-s4)"
