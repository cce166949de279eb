"""The tables `peerkd eval` prints: one row per predict key, one line per measure of a diversity group."""
from peerkd.cli import format_metrics
from peerkd.metrics import EvalResult


def test_format_metrics_rows_and_group_lines():
    row = {"top1": 71.25, "top5": 90.0, "nll": 1.2345, "ece": 3.5, "aurc": 80.0, "eaurc": 10.0}
    text = format_metrics(EvalResult({"peer0": row, "ensemble": dict(row, top1=73.0)},
                                     {"peers": {"diversity": 0.41234, "agreement": 0.75}}))
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["peer0", "ensemble"]
    assert lines[1].split()[1:3] == ["71.25", "90.00"] and lines[2].split()[1] == "73.00"
    assert lines[3:] == ["diversity (peers): mean pairwise distance of predictions 0.4123",
                         "diversity (peers): interrater agreement 0.7500"]
