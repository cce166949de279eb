"""Evaluation metrics. Units: ``top1``, ``top5`` and ``ece`` in percent, ``nll`` in nats per image, ``aurc`` and
``eaurc`` times 1000 (as the calibration tables report them); per group of predict keys, ``diversity`` the mean
Euclidean distance between their probability vectors (0 .. sqrt 2) and ``agreement`` Kuncheva's interrater agreement
kappa (1: the members are right and wrong on the same images; lower: more diverse; 0: independent errors).

The evaluator streams: per key it keeps one confidence and one correctness flag per image, so memory grows with the
test set, not with the number of classes. It returns an :class:`EvalResult`: the metrics of every predict key apart
from the measures of every diversity group; ``EvalResult.to_record`` / ``from_record`` convert it to and from the form
run folders store (the ``metrics`` of an ``eval`` record in ``metrics.jsonl``, ``summary.json``'s ``diversity``
block).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ECE_BINS = 15  # equal-width confidence bins: Guo et al. 2017's count, the default (``trainer.ece_bins``); paper 004
# (PS-KD + BYOT + DMFL) uses PS-KD's code, lgcnsai/PS-KD-Pytorch utils/metric.py ``bin_size=0.1``: 10 bins


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)`` bool: the label is among the ``k`` largest logits."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == y[:, None]).any(-1)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over equal-width bins ``(lo, hi]`` of the confidence."""
    confidence, correct = confidence.double(), correct.double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]
    total = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        in_bin = which == b
        count = in_bin.sum()
        if count > 0:
            total += count / len(confidence) * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(total)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """Area under the risk-coverage curve and its excess over the best possible ordering (Geifman et al. 2019).

    Images are taken in order of falling confidence; after the i-th, the risk is the error rate among those i.
    AURC is the mean of these risks; E-AURC subtracts the AURC of the ordering that puts every correct image first.
    """
    order = torch.argsort(confidence.double(), descending=True, stable=True)
    errors = (~correct[order].bool()).double()
    n = torch.arange(1, len(errors) + 1, dtype=torch.float64)
    area = float((errors.cumsum(0) / n).mean())
    n_errors = errors.sum()
    optimal = float(((n - (len(errors) - n_errors)).clamp_min(0) / n).mean())
    return area, area - optimal


def mean_pairwise_distance(probs: list[torch.Tensor]) -> torch.Tensor:
    """``(B,)``: the mean over member pairs of the Euclidean distance between their probability vectors."""
    pairs = list(itertools.combinations(range(len(probs)), 2))
    return torch.stack([(probs[a] - probs[b]).norm(dim=-1) for a, b in pairs]).mean(0)


def interrater_agreement(correct: torch.Tensor) -> float:
    """Kuncheva & Whitaker's interrater agreement of ``L`` classifiers over ``N`` images (MDE, paper 001, eq. 9):

        kappa = 1 - (1/L) sum_k rho_k (L - rho_k) / (N (L - 1) p (1 - p))

    ``correct`` is ``(L, N)`` (bool: member l classifies image k correctly), ``rho_k`` the count of correct members
    on image k and ``p`` the members' mean accuracy. Members that are all right or all wrong everywhere
    (``p`` in {0, 1}) agree completely: 1.
    """
    correct = correct.double()
    members, images = correct.shape
    rho = correct.sum(0)
    return agreement_from_sums(float((rho * (members - rho)).sum()), float(rho.sum()), members, images)


def agreement_from_sums(disagreement: float, correct_total: float, members: int, images: int) -> float:
    """Eq. 9 from running sums: ``disagreement = sum_k rho_k (L - rho_k)``, ``correct_total = sum_k rho_k``."""
    p = correct_total / (members * images)
    denominator = images * (members - 1) * p * (1 - p)
    if denominator <= 0:
        return 1.0
    return 1.0 - (disagreement / members) / denominator


DIVERSITY_BLOCK = "diversity"  # the stored record's block of group measures, beside the predict keys
AGREEMENT_SUFFIX = "_agreement"  # in that block, ``<group>_agreement`` is the group's kappa; ``<group>`` its distance


@dataclass
class EvalResult:
    """One evaluation: ``keys`` holds ``{predict key: {top1, top5, nll, ece, aurc, eaurc}}``, ``groups`` holds
    ``{diversity group: {"diversity": mean pairwise distance, "agreement": interrater kappa}}`` (units: above)."""

    keys: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def groups_record(self) -> dict[str, dict[str, float]]:
        """The stored form of ``groups``: ``{"diversity": {group: distance, group + "_agreement": kappa}}``, or
        ``{}`` without groups (as ``summary.json`` and the ``eval`` records of ``metrics.jsonl`` hold it)."""
        if not self.groups:
            return {}
        block = {}
        for group, measures in self.groups.items():
            if "diversity" in measures:
                block[group] = measures["diversity"]
            if "agreement" in measures:
                block[group + AGREEMENT_SUFFIX] = measures["agreement"]
        return {DIVERSITY_BLOCK: block}

    def to_record(self) -> dict[str, dict[str, float]]:
        """The stored form: every predict key's metrics, plus the ``diversity`` block where there are groups."""
        return {**self.keys, **self.groups_record()}

    @classmethod
    def from_record(cls, record: dict) -> EvalResult:
        """The inverse of :meth:`to_record`, for records written by any peerkd version (an older record's groups
        may lack ``agreement``)."""
        keys = {key: dict(metrics) for key, metrics in record.items() if key != DIVERSITY_BLOCK}
        block = record.get(DIVERSITY_BLOCK) or {}
        groups: dict[str, dict[str, float]] = {}
        for name, value in block.items():
            group = name[:-len(AGREEMENT_SUFFIX)] if name.endswith(AGREEMENT_SUFFIX) else None
            if group is not None and group in block:
                groups.setdefault(group, {})["agreement"] = float(value)
            else:
                groups.setdefault(name, {})["diversity"] = float(value)
        return cls(keys, groups)


class Evaluator:
    """Accumulates predictions batch by batch, then computes every metric of every ``predict`` key."""

    def __init__(self, diversity_groups: dict[str, list[str]] | None = None, ece_bins: int = ECE_BINS):
        self.groups = diversity_groups or {}
        self.ece_bins = ece_bins
        self.confidence: dict[str, list[torch.Tensor]] = {}
        self.correct: dict[str, list[torch.Tensor]] = {}
        self.top5: dict[str, torch.Tensor] = {}
        self.nll: dict[str, torch.Tensor] = {}
        self.diversity: dict[str, torch.Tensor] = {}
        self.disagreement: dict[str, torch.Tensor] = {}  # per group: sum over images of rho (L - rho)
        self.correct_total: dict[str, torch.Tensor] = {}  # per group: sum over images of rho
        self.count = 0

    @torch.no_grad()
    def update(self, predictions: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        probs = {}
        for key, logits in predictions.items():
            logits = logits.float()
            p = F.softmax(logits, dim=-1)
            probs[key] = p
            conf, pred = p.max(-1)
            self.confidence.setdefault(key, []).append(conf)
            self.correct.setdefault(key, []).append(pred == y)
            self.top5[key] = self.top5.get(key, 0) + topk_correct(logits, y, 5).sum()
            self.nll[key] = self.nll.get(key, 0) + F.cross_entropy(logits, y, reduction="sum")
        for group, keys in self.groups.items():
            if len(keys) > 1:
                dist = mean_pairwise_distance([probs[k] for k in keys]).sum()
                self.diversity[group] = self.diversity.get(group, 0) + dist
                rho = torch.stack([probs[k].argmax(-1) == y for k in keys]).sum(0).double()
                self.disagreement[group] = self.disagreement.get(group, 0) + (rho * (len(keys) - rho)).sum()
                self.correct_total[group] = self.correct_total.get(group, 0) + rho.sum()
        self.count += len(y)

    def compute(self) -> EvalResult:
        """Every metric of every predict key, and the distance and agreement of every group of more than one key."""
        result = EvalResult()
        for key in self.confidence:
            conf = torch.cat(self.confidence[key]).cpu()
            correct = torch.cat(self.correct[key]).cpu()
            area, excess = aurc(conf, correct)
            result.keys[key] = {
                "top1": 100.0 * float(correct.double().mean()),
                "top5": 100.0 * float(self.top5[key]) / self.count,
                "nll": float(self.nll[key]) / self.count,
                "ece": 100.0 * expected_calibration_error(conf, correct, self.ece_bins),
                "aurc": 1000.0 * area,
                "eaurc": 1000.0 * excess,
            }
        for group, total in self.diversity.items():
            result.groups[group] = {
                "diversity": float(total) / self.count,
                "agreement": agreement_from_sums(float(self.disagreement[group]), float(self.correct_total[group]),
                                                 len(self.groups[group]), self.count),
            }
        return result
