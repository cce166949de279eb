"""Loss functions shared by the methods: pure functions of tensors, batch-mean reduced."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    The ``T^2`` keeps the gradient's scale independent of ``T``. The teacher is used as given: detach it first
    where it must not receive gradient.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * (t * t)


def kd_kl_probs(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_probs || softmax(s/T))`` for a teacher already given as a distribution."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    p = teacher_probs.float()
    kl = torch.where(p > 0, p * (p.clamp_min(1e-30).log() - log_p_student), torch.zeros_like(p)).sum(-1)
    return kl.mean() * (t * t)


def soft_ce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a soft target distribution, ``-sum_k q_k log p_k``, averaged over the batch."""
    return -(target_probs.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mean_probs_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the mean of the members' softmax: an ensemble's prediction as logits (NLL and ECE stay exact)."""
    probs = torch.stack([F.softmax(z.float(), dim=-1) for z in logits]).mean(0)
    return probs.clamp_min(1e-30).log()


def mean_feature_mmd(features: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Linear-kernel MMD between two feature batches: ``|| mean_i f_i - mean_i g_i ||_2^2`` for ``(n, d)`` and
    ``(m, d)`` batches (CutⁿMix eq. 9, DDGSD's feature consistency). Detach ``others`` where it must not learn."""
    return (features.float().mean(0) - others.float().mean(0)).pow(2).sum()


def hard_ce(logits: torch.Tensor, batch) -> torch.Tensor:
    """Cross-entropy with the batch's labels; for a mixed batch (``batch.y_b`` set) the mixture
    ``lam * CE(y) + (1 - lam) * CE(y_b)`` of Zhang et al. (Mixup) and Yun et al. (CutMix)."""
    logits = logits.float()
    if batch.y_b is None:
        return F.cross_entropy(logits, batch.y)
    lam = batch.lam.float()
    per_sample = lam * F.cross_entropy(logits, batch.y, reduction="none") + \
        (1 - lam) * F.cross_entropy(logits, batch.y_b, reduction="none")
    return per_sample.mean()
