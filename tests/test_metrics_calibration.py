"""ECE, AURC / E-AURC, NLL and top-k error of peerkd.metrics against small examples worked by hand."""
import math

import pytest
import torch

from peerkd.metrics import Evaluator, aurc, expected_calibration_error


def test_ece_worked_example():
    # 15 bins of width 1/15, each (lo, hi]. 0.95 -> bin 14, 0.90 -> bin 13, 0.65 and 0.62 -> bin 9, 0.30 -> bin 4.
    conf = torch.tensor([0.95, 0.90, 0.65, 0.62, 0.30])
    correct = torch.tensor([True, False, True, False, False])
    # bin 14: |1 - .95| = .05; bin 13: |0 - .9| = .9; bin 9: acc .5, conf .635 -> .135 (2 of 5); bin 4: .3
    expected = (0.05 + 0.90 + 0.30) / 5 + 2 / 5 * 0.135
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-9)  # 0.304


def test_ece_is_zero_when_confidence_matches_accuracy():
    conf = torch.full((4,), 0.75)
    correct = torch.tensor([True, True, True, False])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_aurc_and_eaurc_worked_example():
    # falling confidence: correct, wrong, correct, wrong -> risks 0/1, 1/2, 1/3, 2/4
    conf = torch.tensor([0.6, 0.9, 0.7, 0.8])
    correct = torch.tensor([False, True, True, False])
    area, excess = aurc(conf, correct)
    expected = (0 + 1 / 2 + 1 / 3 + 2 / 4) / 4
    optimal = (0 + 0 + 1 / 3 + 2 / 4) / 4  # both correct images first
    assert area == pytest.approx(expected)
    assert excess == pytest.approx(expected - optimal)  # 0.125


def test_evaluator_reports_top_k_nll_and_units():
    # two images, 6 classes; image 0: label 0 ranked first; image 1: label 5 ranked 6th (outside the top 5)
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 3.0, 2.5, 2.0, 1.5, -1.0]])
    y = torch.tensor([0, 5])
    ev = Evaluator()
    ev.update({"net": logits}, y)
    m = ev.compute().keys["net"]
    assert m["top1"] == pytest.approx(50.0) and 100 - m["top1"] == pytest.approx(50.0)  # top-1 error 50 %
    assert m["top5"] == pytest.approx(50.0)  # top-5 error 50 %
    nll0 = -(2.0 - math.log(math.exp(2) + math.exp(1) + 4))
    nll1 = -(-1.0 - math.log(1 + math.exp(3) + math.exp(2.5) + math.exp(2) + math.exp(1.5) + math.exp(-1)))
    assert m["nll"] == pytest.approx((nll0 + nll1) / 2, rel=1e-6)
    p0 = math.exp(2) / (math.exp(2) + math.exp(1) + 4)
    p1 = math.exp(3) / (1 + math.exp(3) + math.exp(2.5) + math.exp(2) + math.exp(1.5) + math.exp(-1))
    assert m["ece"] == pytest.approx(100 * ((1 - p0) + p1) / 2, rel=1e-5)  # different bins, percent
    assert p0 > p1  # the correct image is the more confident: risks 0/1 then 1/2
    assert m["aurc"] == pytest.approx(1000 * (0 + 1 / 2) / 2) and m["eaurc"] == pytest.approx(0.0, abs=1e-9)
