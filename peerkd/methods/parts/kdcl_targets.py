"""KDCL's soft-target rules (Guo et al., CVPR 2020, section 3.2) as pure functions of tensors.

Conventions: ``logits`` is ``(m, B, K)`` (m students, B samples, K classes), ``labels`` is ``(B,)`` int64. Every rule
works at temperature 1 on the hard labels (the paper's eq. 4-11 use the plain cross-entropy / probability); the caller
softens the result by ``T`` for the distillation term. Nothing here syncs with the host except
:func:`general_weights`, which runs once per epoch.
"""
from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F

Scope = Literal["sample", "batch"]  # Naive / Linear: one choice per sample or one for the whole batch
GeneralConstraint = Literal["simplex", "none"]  # General: w on the simplex (the text) or eq. 11 as it is


def per_student_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(m, B)``: the cross-entropy of every student on every sample."""
    m, b, k = logits.shape
    return F.cross_entropy(logits.reshape(m * b, k).float(), labels.repeat(m), reduction="none").view(m, b)


def naive_target(logits: torch.Tensor, labels: torch.Tensor,
                 scope: Scope = "sample") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4: the logits of the student with the lowest cross-entropy. Returns ``(z_t (B, K), chosen (B,))``,
    ``chosen`` the index of the student picked for each sample.

    scope: ``"sample"`` picks per sample (eq. 4 with ``y`` one label); ``"batch"`` picks one student for the whole
    batch, the one with the lowest batch-mean CE (eq. 4 with ``y`` the batch's labels)."""
    ce = per_student_ce(logits, labels)  # (m, B)
    if scope == "sample":
        chosen = ce.argmin(0)  # (B,)
    elif scope == "batch":
        chosen = ce.mean(1).argmin().expand(labels.shape[0])
    else:
        raise ValueError(f"naive scope must be 'sample' or 'batch', got '{scope}'")
    z_t = logits.gather(0, chosen.view(1, -1, 1).expand(1, *logits.shape[1:]))[0]
    return z_t, chosen


def minlogit_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7: subtract from each student's logits its target-class logit (``z^c = z - z_c``; the softmax is
    unchanged), then take the element-wise minimum over students. The target class entry is 0."""
    target_logit = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # (m, B, 1)
    return (logits - target_logit).min(0).values


def _combination_ce(alpha: torch.Tensor, grouped: torch.Tensor, grouped_labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the combined logits ``sum_i alpha_i z_i`` for each group and each candidate.

    alpha: ``(S, G, m)`` candidates; grouped: ``(G, N, m, K)``; grouped_labels: ``(G, N)``. Returns ``(S, G)``."""
    combined = (alpha[:, :, None, :, None] * grouped.unsqueeze(0)).sum(3)  # (S, G, N, K); m is small: no matmul
    target = combined.gather(3, grouped_labels.view(1, *grouped_labels.shape, 1).expand(alpha.shape[0], -1, -1, 1))
    return (torch.logsumexp(combined, dim=3) - target[..., 0]).mean(2)


def _combination_grad(alpha: torch.Tensor, grouped: torch.Tensor, grouped_labels: torch.Tensor) -> torch.Tensor:
    """``(G, m)``: the gradient of the group's mean CE with respect to ``alpha`` ``(G, m)``:
    ``d/d alpha_i = mean_n <softmax(s_n) - onehot(y_n), z_{n,i}>`` (written out: no autograd inside the step)."""
    combined = (alpha[:, None, :, None] * grouped).sum(2)  # (G, N, K)
    residual = torch.softmax(combined, dim=2) - F.one_hot(grouped_labels, combined.shape[2]).to(combined.dtype)
    return (residual.unsqueeze(2) * grouped).sum((1, 3)) / grouped.shape[1]


def linear_weights(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 30,
                   scope: Scope = "sample") -> torch.Tensor:
    """Eq. 5: the convex combination ``alpha`` (on the simplex) of the students' logits with the lowest CE.

    scope: ``"sample"`` solves one ``alpha`` per sample (returns ``(B, m)``), ``"batch"`` one for the whole batch
    (the batch-mean CE; returns ``(1, m)``).

    Solver, run on the device with a fixed amount of work and no host round-trip:
      * m = 2: bisection on the derivative of the (convex, one-dimensional) CE along ``a z_1 + (1 - a) z_2``,
        ``iterations`` halvings of [0, 1] (30 gives ``a`` to 1e-9, below float32 resolution);
      * m > 2: exponentiated-gradient (entropic mirror) descent from equal weights, ``iterations`` steps; each step
        tries a fixed ladder of 17 step sizes (and staying put) and keeps, per group, the one with the lowest CE,
        so the CE never rises.
    Finally every vertex (each student alone) is also evaluated and kept where it is better, so the result's CE is
    never above any single student's.
    """
    m, b, k = logits.shape
    z = logits.detach().float().permute(1, 0, 2)  # (B, m, K)
    if scope == "sample":
        grouped, grouped_labels = z.unsqueeze(1), labels.view(b, 1)
    elif scope == "batch":
        grouped, grouped_labels = z.unsqueeze(0), labels.view(1, b)
    else:
        raise ValueError(f"linear scope must be 'sample' or 'batch', got '{scope}'")
    groups = grouped.shape[0]
    if m == 2:
        low = torch.zeros(groups, device=z.device)
        high = torch.ones(groups, device=z.device)
        direction = grouped[:, :, 0] - grouped[:, :, 1]  # (G, N, K)
        onehot = F.one_hot(grouped_labels, k).float()
        for _ in range(iterations):
            mid = (low + high) / 2
            combined = grouped[:, :, 1] + mid.view(-1, 1, 1) * direction
            slope = ((torch.softmax(combined, 2) - onehot) * direction).sum((1, 2))
            rising = slope > 0
            high = torch.where(rising, mid, high)
            low = torch.where(rising, low, mid)
        a = (low + high) / 2
        alpha = torch.stack([a, 1 - a], dim=1)
    else:
        alpha = torch.full((groups, m), 1.0 / m, device=z.device)
        ladder = torch.cat([torch.zeros(1, device=z.device), 2.0 ** torch.arange(-10, 7, device=z.device)])
        for _ in range(iterations):
            grad = _combination_grad(alpha, grouped, grouped_labels)
            spread = (grad.max(1, keepdim=True).values - grad.min(1, keepdim=True).values).clamp_min(1e-12)
            step = ladder.view(-1, 1, 1) / spread  # (S, G, 1): step sizes relative to the gradient's spread
            log_alpha = alpha.clamp_min(1e-30).log().unsqueeze(0) - step * (grad - grad.min(1, keepdim=True).values)
            candidates = torch.softmax(log_alpha, dim=2)  # (S, G, m), on the simplex
            best = _combination_ce(candidates, grouped, grouped_labels).argmin(0)  # (G,)
            alpha = candidates.gather(0, best.view(1, -1, 1).expand(1, -1, m))[0]
    vertices = torch.eye(m, device=z.device).unsqueeze(1).expand(m, groups, m)
    candidates = torch.cat([alpha.unsqueeze(0), vertices], 0)  # (1 + m, G, m)
    best = _combination_ce(candidates, grouped, grouped_labels).argmin(0)
    return candidates.gather(0, best.view(1, -1, 1).expand(1, -1, m))[0]


def linear_target(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 30,
                  scope: Scope = "sample") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: ``(z_t (B, K), alpha)`` with ``z_t = sum_i alpha_i z_i`` (see :func:`linear_weights`)."""
    alpha = linear_weights(logits, labels, iterations, scope)  # (B, m) or (1, m)
    z_t = torch.einsum("bm,mbk->bk", alpha.expand(logits.shape[1], -1), logits.detach().float())
    return z_t, alpha


def target_class_errors(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, m)``: ``f_i(x) - t`` of eq. 8, the target-class probability minus the ground truth ``t = 1``."""
    probs = torch.softmax(logits.float(), dim=2)
    target = probs.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0]  # (m, B)
    return (target - 1.0).t()


def general_weights(covariance: torch.Tensor, constraint: GeneralConstraint = "simplex",
                    ridge: float = 1e-6) -> torch.Tensor:
    """Eq. 11: ``w = C^-1 1 / 1^T C^-1 1`` for the error covariance ``C`` (eq. 10), in float64.

    Singular-C guard: ``C + ridge * (trace(C) / m + 1e-12) I`` is inverted, so identical students (``C`` of rank 1)
    get equal weights; an all-zero ``C`` (every student perfect) or a non-finite result gives equal weights.
    constraint: ``"none"`` returns eq. 11 as it is (weights may be negative); ``"simplex"`` enforces the paper's
    ``w_i in [0, 1]``: eq. 11 when it already lies there, else the exact minimiser of ``w^T C w`` on the simplex,
    found by solving eq. 11 on every support (subset of students) and keeping the best non-negative solution.
    """
    if constraint not in ("simplex", "none"):
        raise ValueError(f"general constraint must be 'simplex' or 'none', got '{constraint}'")
    c = covariance.detach().to("cpu", torch.float64)
    m = c.shape[0]
    equal = torch.full((m,), 1.0 / m, dtype=torch.float64)
    if not torch.isfinite(c).all() or float(torch.diagonal(c).sum()) <= 0:
        return equal.to(covariance.device, torch.float32)

    def solve(sub: torch.Tensor) -> torch.Tensor | None:
        n = sub.shape[0]
        reg = sub + ridge * (float(torch.diagonal(sub).sum()) / n + 1e-12) * torch.eye(n, dtype=torch.float64)
        x = torch.linalg.solve(reg, torch.ones(n, dtype=torch.float64))
        total = x.sum()
        if not torch.isfinite(x).all() or abs(float(total)) < 1e-300:
            return None
        return x / total

    w = solve(c)
    if w is None:
        w = equal
    if constraint == "simplex" and bool((w < 0).any()):
        best, best_value = equal, float(equal @ c @ equal)
        for size in range(1, m + 1):
            for support in itertools.combinations(range(m), size):
                idx = torch.tensor(support)
                w_sub = solve(c[idx][:, idx])
                if w_sub is None or bool((w_sub < 0).any()):
                    continue
                candidate = torch.zeros(m, dtype=torch.float64)
                candidate[idx] = w_sub
                value = float(candidate @ c @ candidate)
                if value < best_value - 1e-15:
                    best, best_value = candidate, value
        w = best
    return w.to(covariance.device, torch.float32)


def general_target(logits: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """KDCL-General's soft target: the weighted average of the students' softened probabilities,
    ``sum_i w_i softmax(z_i / T)`` ``(B, K)``. Negative weights (constraint "none") can push entries below 0; they
    are clipped at 0 and the distribution renormalised."""
    probs = torch.softmax(logits.detach().float() / temperature, dim=2)
    target = torch.einsum("m,mbk->bk", weights.float(), probs).clamp_min(0)
    return target / target.sum(1, keepdim=True).clamp_min(1e-30)
