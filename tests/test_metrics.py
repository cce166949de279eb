"""Metrics against small worked examples."""
import math

import pytest
import torch

from peerkd.metrics import EvalResult, Evaluator, aurc, expected_calibration_error, mean_pairwise_distance, topk_correct


def test_ece_worked_example():
    # bins of width 1/15; confidences 0.95 (two, one right), 0.55 (one, right), 0.35 (one, wrong)
    conf = torch.tensor([0.95, 0.95, 0.55, 0.35])
    correct = torch.tensor([True, False, True, False])
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1.0 - 0.55) + 1 / 4 * abs(0.0 - 0.35)
    assert abs(expected_calibration_error(conf, correct) - expected) < 1e-6  # float32 confidences


def test_ece_zero_when_calibrated_and_bin_edges_are_right_closed():
    conf = torch.tensor([0.5, 0.5, 1.0, 1.0])
    correct = torch.tensor([True, False, True, True])
    assert expected_calibration_error(conf, correct) < 1e-12
    # 1/15 sits on the edge: it belongs to the first bin (0, 1/15], with 0.0
    conf = torch.tensor([1 / 15, 0.0])
    correct = torch.tensor([False, False])
    assert abs(expected_calibration_error(conf, correct) - (1 / 15) / 2) < 1e-6


def test_aurc_worked_example():
    # order by confidence: 0.9 right, 0.8 wrong, 0.7 right, 0.6 wrong
    conf = torch.tensor([0.7, 0.9, 0.6, 0.8])
    correct = torch.tensor([True, True, False, False])
    risks = [0 / 1, 1 / 2, 1 / 3, 2 / 4]
    optimal = [0 / 1, 0 / 2, 1 / 3, 2 / 4]
    area, excess = aurc(conf, correct)
    assert abs(area - sum(risks) / 4) < 1e-12
    assert abs(excess - (sum(risks) - sum(optimal)) / 4) < 1e-12


def test_topk_and_pairwise_distance():
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.0], [3.0, 2.0, 1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([2, 3]), 2).tolist() == [True, False]
    p = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.0, 1.0]])
    r = torch.tensor([[0.5, 0.5]])
    expected = (math.sqrt(2) + math.sqrt(0.5) + math.sqrt(0.5)) / 3
    assert abs(float(mean_pairwise_distance([p, q, r])[0]) - expected) < 1e-6


def test_evaluator_reports_every_key_and_diversity():
    ev = Evaluator({"peers": ["a", "b"]})
    y = torch.tensor([0, 1])
    a = torch.tensor([[5.0, 0.0], [5.0, 0.0]])  # right, wrong
    b = torch.tensor([[0.0, 5.0], [0.0, 5.0]])  # wrong, right
    ev.update({"a": a, "b": b}, y)
    out = ev.compute()
    assert list(out.keys) == ["a", "b"] and list(out.groups) == ["peers"]
    assert out.keys["a"]["top1"] == 50.0 and out.keys["b"]["top1"] == 50.0
    assert out.keys["a"]["top5"] == 100.0
    nll = -(math.log(torch.softmax(a[0], 0)[0].item()) + math.log(torch.softmax(a[1], 0)[1].item())) / 2
    assert abs(out.keys["a"]["nll"] - nll) < 1e-5
    pa, pb = torch.softmax(a, -1), torch.softmax(b, -1)
    assert abs(out.groups["peers"]["diversity"] - float((pa - pb).norm(dim=-1).mean())) < 1e-6
    assert out.groups["peers"]["agreement"] == pytest.approx(-1.0)  # each image: one right, one wrong


def test_eval_result_stored_form_round_trips_and_reads_older_records():
    result = EvalResult({"a": {"top1": 50.0}, "b": {"top1": 25.0}},
                        {"peers": {"diversity": 0.5, "agreement": -0.25}, "x_agreement": {"diversity": 0.1}})
    record = result.to_record()
    assert record == {"a": {"top1": 50.0}, "b": {"top1": 25.0},
                      "diversity": {"peers": 0.5, "peers_agreement": -0.25, "x_agreement": 0.1}}
    assert EvalResult.from_record(record) == result  # a group whose name ends in _agreement stays a group
    older = EvalResult.from_record({"net1": {"top1": 70.0}, "diversity": {"branches": 0.3}})  # before agreement
    assert older.keys == {"net1": {"top1": 70.0}} and older.groups == {"branches": {"diversity": 0.3}}
    assert EvalResult({"net": {"top1": 1.0}}).to_record() == {"net": {"top1": 1.0}}  # no groups: no block
