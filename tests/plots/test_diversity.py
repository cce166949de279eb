"""The diversity curves read from metrics.jsonl: a group's distance per epoch, never its agreement."""
import json

from peerkd.plots.diversity import load_diversity


def test_agreement_is_not_read_as_a_distance_curve(tmp_path):
    records = [{"kind": "eval", "epoch": epoch, "metrics": {
        "peer0": {"top1": 50.0}, "diversity": {"peers": 0.1 * (epoch + 1), "peers_agreement": 0.9}}}
        for epoch in range(2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = load_diversity(tmp_path)
    assert list(curves) == ["peers"]
    assert [epoch for epoch, _ in curves["peers"]] == [1, 2]
    assert [round(value, 6) for _, value in curves["peers"]] == [0.1, 0.2]
