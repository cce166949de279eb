"""``benchmarks/gpu_session.sh dry-run``: the GPU session's own call1, cells and sweep-throughput command lines, run on
the CPU with tiny sizes, exit 0 and leave every output a GPU session brings back. A key, row or flag renamed under
the script fails here instead of costing a lent GPU's minutes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
DRY_RUN_LIMIT_S = 600  # about a minute on two idle cores; minutes more when other test runs share them


@pytest.mark.slow
def test_dry_run_runs_the_sessions_commands_on_the_cpu_and_checks_their_outputs(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(SCRIPT), "dry-run"], cwd=ROOT, capture_output=True, text=True,
                            timeout=DRY_RUN_LIMIT_S, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("dry run OK"), result.stdout
    dry = tmp_path / "dry_run"

    call1 = dry / "call1"
    for row in ("vanilla_R32", "DML_2xR32", "CSS_2xR110x3", "ONE_R32x4", "KDCL_2xR32", "PS-KD_BYOT_DMFL_R18"):
        (record,) = json.loads((call1 / f"bench_{row}.json").read_text())
        assert record["reference"]["ms_per_step"] > 0 and record["fast"]["ms_per_step"] > 0, record
        assert record["models"] and record["device"] == "cpu"  # --quick --device cpu reached bench.py
    assert "fast_streams" in json.loads((call1 / "bench_DML_2xR32.json").read_text())[0]  # --members-compare
    for row in ("DML_2xR32", "CSS_2xR110x3"):
        assert "== fast, members grouped:" in (call1 / f"profile_{row}.txt").read_text()
    assert "skipped" in (call1 / "test_cuda.txt").read_text()  # the CUDA tests were found (and skip on a CPU)

    for cell in ("vanilla_resnet32", "dml_resnet32", "kdcl_general_icl"):
        summary = json.loads((dry / "cells" / "runs" / cell / "summary.json").read_text())
        assert summary["epochs"] == 1, summary  # the cells' own configs, one tiny epoch on the generated files

    (sweep,) = json.loads((dry / "sweep" / "sweep_throughput.json").read_text())
    assert sweep["exit"] == 0 and sweep["images_per_s_steady"] > 0, sweep


def test_an_unknown_command_prints_the_usage_with_dry_run():
    result = subprocess.run(["bash", str(SCRIPT), "no-such-command"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, OUT="/tmp/peerkd_gpu_session_usage"))
    assert result.returncode == 2 and "gpu_session.sh dry-run" in result.stdout
