"""The speed harness runs end to end on CPU with tiny settings."""
from __future__ import annotations

import json

from peerkd.cli import main


def test_bench_quick_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--device", "cpu", "--only", "dml 2xresnet8", "--steps", "1", "--warmup", "1",
                 "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [row["shape"] for row in rows] == ["dml 2xresnet8"]
    for row in rows:
        assert row["ratio"] > 0 and row["flops_per_step"] > 0
        assert row["fast"]["ms_per_step"] > 0 and row["reference"]["images_per_s"] > 0
    assert "ratios only" in capsys.readouterr().out
