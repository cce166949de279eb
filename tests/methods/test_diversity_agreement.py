"""Kuncheva's interrater agreement (paper 001, eq. 9) on a worked example, and in the Evaluator."""
import torch

from peerkd.metrics import Evaluator, interrater_agreement


def test_interrater_agreement_worked_example():
    correct = torch.tensor([[1, 1, 0, 1],   # classifier 1 on images 1..4
                            [1, 0, 0, 1],   # classifier 2
                            [1, 1, 1, 0]], dtype=torch.bool)
    # rho = [3, 2, 1, 2]; sum rho (L - rho) = 0 + 2 + 2 + 2 = 6; (1/L) * 6 = 2
    # p = 8 / 12 = 2/3; N (L - 1) p (1 - p) = 4 * 2 * 2/9 = 16/9; kappa = 1 - 2 / (16/9) = -0.125
    assert abs(interrater_agreement(correct) - (-0.125)) < 1e-12
    identical = torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool)
    assert abs(interrater_agreement(identical) - 1.0) < 1e-12


def test_evaluator_reports_distance_and_agreement_per_group():
    y = torch.tensor([0, 1, 2, 0])

    def logits_for(predicted):  # confident one-hot-like logits for the predicted classes
        return torch.nn.functional.one_hot(torch.tensor(predicted), 3).float() * 10

    # correct flags: a [1,1,0,1], b [1,0,0,1], c [1,1,1,0] -> the worked example above
    preds = {"a": logits_for([0, 1, 0, 0]), "b": logits_for([0, 0, 1, 0]), "c": logits_for([0, 1, 2, 1])}
    evaluator = Evaluator({"peers": ["a", "b", "c"]})
    evaluator.update({k: v[:2] for k, v in preds.items()}, y[:2])  # streamed in two batches
    evaluator.update({k: v[2:] for k, v in preds.items()}, y[2:])
    metrics = evaluator.compute()
    assert set(metrics.groups) == {"peers"} and set(metrics.keys) == {"a", "b", "c"}
    assert abs(metrics.groups["peers"]["agreement"] - (-0.125)) < 1e-9
    assert 0 < metrics.groups["peers"]["diversity"] < 2 ** 0.5
