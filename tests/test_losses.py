"""Loss values against formulas written out by hand."""
import math

import torch

from peerkd.data import Batch
from peerkd.losses import hard_ce, kd_kl, kd_kl_probs, mean_feature_mmd, mean_probs_logits, soft_ce


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_kl_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    t = 3.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p = softmax([v / t for v in t_row])
        q = softmax([v / t for v in s_row])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t * t
    got = kd_kl(torch.tensor(student), torch.tensor(teacher), t)
    assert abs(float(got) - expected) < 1e-6


def test_kd_kl_is_zero_for_equal_logits_and_probs_variant_agrees():
    z = torch.randn(4, 7)
    assert float(kd_kl(z, z, 2.0)) < 1e-6
    teacher = torch.randn(4, 7)
    probs = torch.softmax(teacher / 2.0, -1)
    assert torch.allclose(kd_kl(z, teacher, 2.0), kd_kl_probs(z, probs, 2.0), atol=1e-6)


def test_soft_ce_and_hard_ce_by_hand():
    logits = [[0.2, 1.5, -0.3]]
    q = [0.1, 0.7, 0.2]
    p = softmax(logits[0])
    expected = -sum(qi * math.log(pi) for qi, pi in zip(q, p))
    assert abs(float(soft_ce(torch.tensor(logits), torch.tensor([q]))) - expected) < 1e-6
    batch = Batch(x=torch.zeros(1), y=torch.tensor([1]), index=torch.tensor([0]))
    assert abs(float(hard_ce(torch.tensor(logits), batch)) + math.log(p[1])) < 1e-6


def test_hard_ce_of_a_mixed_batch_is_the_label_mixture():
    logits = torch.tensor([[0.2, 1.5, -0.3], [1.0, 0.0, 0.0]])
    lam = 0.3
    batch = Batch(x=torch.zeros(2), y=torch.tensor([1, 0]), index=torch.arange(2), y_b=torch.tensor([2, 2]),
                  lam=torch.tensor(lam))
    expected = 0.0
    for row, ya, yb in zip(logits.tolist(), [1, 0], [2, 2]):
        p = softmax(row)
        expected += -(lam * math.log(p[ya]) + (1 - lam) * math.log(p[yb]))
    assert abs(float(hard_ce(logits, batch)) - expected / 2) < 1e-6


def test_ensemble_logits_are_log_mean_probabilities():
    a, b = [0.0, 1.0], [2.0, -1.0]
    pa, pb = softmax(a), softmax(b)
    mean = [(x + y) / 2 for x, y in zip(pa, pb)]
    got = mean_probs_logits([torch.tensor([a]), torch.tensor([b])])
    assert torch.allclose(got.exp(), torch.tensor([mean]), atol=1e-6)


def test_mean_feature_mmd_of_tiny_features_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # mean (2, 1)
    g = torch.tensor([[0.0, 1.0], [0.0, 3.0], [3.0, 2.0]])  # mean (1, 2): batches of different sizes
    assert abs(float(mean_feature_mmd(f, g)) - ((2 - 1) ** 2 + (1 - 2) ** 2)) < 1e-6
    assert float(mean_feature_mmd(f, f)) == 0.0
