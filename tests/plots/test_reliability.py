"""The reliability diagram: its bins agree with the ECE of peerkd.metrics, and a PNG is written from a run folder."""
import pytest
import torch

from tests.helpers import short_run
from peerkd.metrics import expected_calibration_error
from peerkd.plots.reliability import reliability_bins


def test_reliability_bins_match_the_metric():
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(500, generator=gen)
    correct = torch.rand(500, generator=gen) < conf
    binned = reliability_bins(conf, correct)
    assert int(binned.counts.sum()) == 500 and len(binned.counts) == 15
    assert binned.ece == pytest.approx(expected_calibration_error(conf, correct), abs=1e-12)


def test_reliability_bins_hand_example():
    binned = reliability_bins(torch.tensor([0.95, 0.90, 0.65, 0.62]), torch.tensor([True, False, True, False]))
    assert binned.counts[9] == 2 and binned.accuracy[9] == pytest.approx(0.5)
    assert binned.confidence[9] == pytest.approx(0.635)
    assert binned.counts[14] == 1 and binned.accuracy[13] == 0.0


def test_reliability_diagram_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from peerkd.plots.reliability import reliability_diagram

    run_dir = tmp_path / "run"
    short_run({"name": "pskd", "model": "resnet8"}, run_dir, epochs=1, train_size=256)
    path = reliability_diagram(run_dir)
    assert path == run_dir / "reliability_net.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):
        reliability_diagram(run_dir, key="ensemble")
