"""peerkd sweep under its own faults: killed with SIGKILL while its runs go on (the next sweep waits for them and
counts them, never starts a second copy), two sweeps into one --out (they share the work), a run that fails every
time (bounded retries, its log's last lines, the others go on, exit 1 with the list), a run that fails once, a run
folder that cannot be written (disk full) and one deleted by hand during the sweep."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peerkd.core.run_lock import lock_holder
from peerkd.experiments import sweep
from peerkd.experiments.sweep import RunSpec, plan, run_local, run_state

ROOT = Path(__file__).resolve().parents[2]
TINY = {"data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 200,
                 "synthetic": {"num_classes": 4, "train_size": 256, "test_size": 64}},
        "schedule": {"epochs": 4, "kind": "cosine"}, "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "log_every": 4, "threads": 1},
        "method": {"name": "vanilla", "models": ["resnet8"]}}


def config_file(folder: Path) -> Path:
    path = folder / "v.yaml"
    path.write_text(yaml.safe_dump({"name": "v", **TINY}))
    return path


def sweep_process(config: Path, out: Path, seeds: str, jobs: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "peerkd", "sweep", str(config), "--seeds", seeds, "--jobs",
                             str(jobs), "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def starts(run_dir: Path) -> list[str]:
    """The events of the run's history: one "start", then a "resume" per continuation."""
    return [json.loads(line)["event"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


def kill_leftovers(specs) -> None:
    for spec in specs:
        holder = lock_holder(spec.run_dir)
        if holder and isinstance(holder.get("pid"), int):
            os.kill(holder["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_a_sweep_killed_with_its_runs_alive_is_continued_without_a_second_copy(tmp_path):
    config, out = config_file(tmp_path), tmp_path / "runs"
    specs = plan([str(config)], [0, 1, 2, 3], out=str(out))
    first = sweep_process(config, out, "0-3", 2)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and sum(lock_holder(s.run_dir) is not None for s in specs) < 2:
            time.sleep(0.05)
        assert sum(lock_holder(s.run_dir) is not None for s in specs) == 2, first.communicate(timeout=5)
        first.kill()  # SIGKILL: the sweep dies, its two runs (own sessions) go on holding their folders
        first.communicate(timeout=30)
        second = sweep_process(config, out, "0-3", 2)
        stdout, stderr = second.communicate(timeout=300)
    finally:
        kill_leftovers(specs)
    assert second.returncode == 0, stdout + stderr
    assert "running in another process (pid" in stdout and "FAILED" not in stdout and ": failed (" not in stdout
    assert "[sweep] finished: 4/4 done, 0 failed" in stdout
    for spec in specs:
        assert run_state(spec) == "done"
        assert starts(Path(spec.run_dir))[0] == "start" and starts(Path(spec.run_dir)).count("start") == 1


@pytest.mark.slow
def test_two_sweeps_into_one_folder_share_the_runs(tmp_path):
    config, out = config_file(tmp_path), tmp_path / "runs"
    specs = plan([str(config)], [0, 1, 2], out=str(out))
    a, b = sweep_process(config, out, "0-2", 1), sweep_process(config, out, "0-2", 1)
    try:
        outputs = [p.communicate(timeout=300) for p in (a, b)]
    finally:
        kill_leftovers(specs)
    for process, (stdout, stderr) in zip((a, b), outputs):
        assert process.returncode == 0, stdout + stderr
        assert "[sweep] finished: 3/3 done, 0 failed" in stdout
    for spec in specs:
        assert starts(Path(spec.run_dir)).count("start") == 1  # each run trained from scratch once


def stand_in(monkeypatch, script: str) -> None:
    """peerkd train replaced by ``script`` (argv: seed, run folder), as the sweep launches it."""
    monkeypatch.setattr(RunSpec, "train_argv", lambda self, nproc=1: [sys.executable, "-c", script, str(self.seed),
                                                                       self.run_dir])


def test_a_run_failing_every_time_is_retried_then_listed_and_one_failing_once_finishes(tmp_path, monkeypatch):
    specs = plan([str(config_file(tmp_path))], [0, 1, 2], out=str(tmp_path / "runs"))
    script = ("import sys; from pathlib import Path; seed, run = sys.argv[1], Path(sys.argv[2]); "
              "flaky = run / 'tried'; first = not flaky.exists(); flaky.write_text('x'); "
              "print('loading data'); print('step 3: loss is nan', file=sys.stderr); "
              "sys.exit(3 if seed == '1' or (seed == '2' and first) else 0)")
    stand_in(monkeypatch, script)
    lines = []
    result = run_local(specs, jobs=2, say=lines.append, retries=1)
    assert result.exit_code == 1 and result.failed == ["v-s1"] and sorted(result.done) == ["v-s0", "v-s2"]
    text = "\n".join(lines)
    assert text.count("v-s1: failed (exit 3)") == 1 and "(1 of 1 retries)" in text
    assert text.count("v-s1: FAILED (exit 3)") == 1 and "loading data | step 3: loss is nan" in text
    assert text.count("v-s2: failed (exit 3)") == 1 and "v-s2: FAILED" not in text
    assert lines[-1] == "[sweep] finished: 2/3 done, 1 failed (v-s1)"


def test_a_run_folder_that_cannot_be_written_fails_alone(tmp_path, monkeypatch):
    specs = plan([str(config_file(tmp_path))], [0, 1], out=str(tmp_path / "runs"))
    stand_in(monkeypatch, "import sys; sys.exit(0)")
    real_start = sweep._start

    def disk_full_for_seed_1(spec, *args):
        if spec.seed == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_start(spec, *args)

    monkeypatch.setattr(sweep, "_start", disk_full_for_seed_1)
    lines = []
    result = run_local(specs, say=lines.append, retries=0)
    assert result.failed == ["v-s1"] and result.done == ["v-s0"] and result.exit_code == 1
    assert any(line.endswith(f"v-s1: FAILED (cannot start) {specs[1].run_dir}: No space left on device")
               for line in lines), lines


def test_a_run_folder_deleted_during_the_sweep_is_started_again(tmp_path, monkeypatch):
    specs = plan([str(config_file(tmp_path))], [0], out=str(tmp_path / "runs"))
    marker = tmp_path / "deleted_once"
    script = (f"import shutil, sys; from pathlib import Path; marker = Path({str(marker)!r}); "
              "first = not marker.exists(); marker.write_text('x'); "
              "first and shutil.rmtree(sys.argv[2]); sys.exit(1 if first else 0)")
    stand_in(monkeypatch, script)
    lines = []
    result = run_local(specs, say=lines.append, retries=1)
    assert result.done == ["v-s0"] and result.exit_code == 0, lines
    assert any("v-s0: failed (exit 1)" in line for line in lines)
    assert Path(specs[0].run_dir, "sweep.log").is_file()  # the second attempt made the folder again
