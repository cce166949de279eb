"""KDCL: Guo, Wang, Wu, Yu, Liang, Hu, Luo, "Online Knowledge Distillation via Collaborative Learning", CVPR 2020.

m >= 2 students of any registered architectures (different widths and depths in one cohort) are trained from scratch
together; a soft target built from all of them supervises each (eq. 2):

    L = sum_i [ CE(z_i, y) + lambda * T^2 * KL(p_t || softmax(z_i / T)) ],   T = 2, lambda = 1

The soft target ``p_t`` (``target`` option; the rules are pure functions in :mod:`peerkd.methods.parts.kdcl_targets`):
  naive     eq. 4: per sample, the logits of the student with the lowest CE; ``p_t = softmax(z_t / T)``
            (``naive_scope: batch``: one student, the lowest batch-mean CE, for the whole batch).
  linear    eq. 5: the convex combination of the students' logits with the lowest CE, solved every step on the
            device (m = 2: bisection on the derivative, exact to float precision; m > 2: exponentiated-gradient
            descent on the simplex with a per-step ladder of step sizes; both a fixed number of iterations).
  minlogit  eq. 6-7: subtract each student's target-class logit, take the element-wise minimum over students.
  general   eq. 8-11: ``p_t = sum_i w_i softmax(z_i / T)`` with ``w = C^-1 1 / 1^T C^-1 1``, ``C_ij`` the mean over a
            held-out split of the training set of ``(f_i - 1)(f_j - 1)``, ``f_i`` student i's probability of the true
            class. ``w`` starts equal (1/m) and is recomputed after every epoch in ``on_epoch_end`` (a buffer, so
            checkpoints keep it); under DDP every rank evaluates the whole, unsharded held-out split and so computes
            the same ``w``.

Invariant collaborative learning (``icl``, section 3.2): the loader gives m independently augmented views of the same
images and student i sees view i. The rule is then applied to the m students' logits, each on its own view, giving a
single target shared by every student: the target fuses the students' outputs across the distortions (one forward
pass per student, as in the paper's Fig. 2 where each network receives its own distorted image ``h(x, eps_i)``).
Without ``icl`` every student sees the same augmented image (view 0). Identical students run as the run's
``trainer.members`` says (:mod:`peerkd.models.execution`); the maths, checkpoints and exports are those of separate
ones.

Readings where the paper is ambiguous:
  * The target carries no gradient (it is a teacher); every student's CE and KL train that student only.
  * The rules select / combine at temperature 1 on the hard labels (eq. 4-11 use the plain CE and probability);
    the chosen logits (or, for General, the weighted probabilities) are then softened by T for the KL.
  * Naive and Linear work per sample: eq. 4 and eq. 5 are written for one logit vector per student and one label y
    (eq. 4's y is "the one-hot label"). ``naive_scope: batch`` / ``linear_scope: batch`` pick one student / solve
    one combination for the whole batch instead (the batch-mean CE), the reading where Z and y are the batch's.
  * General: the text requires ``w_i in [0, 1]`` but eq. 11 does not enforce it. ``general_constraint: simplex``
    (default) uses eq. 11 whenever it lies in [0, 1] and otherwise the exact minimiser of ``w^T C w`` on the simplex;
    ``none`` is eq. 11 as written. A singular C is regularised by a ridge of 1e-6 of its mean diagonal (identical
    students get equal weights; an all-zero C gives equal weights). ``f_i`` uses temperature 1, in eval mode.
  * Cutout (Table 10): ``cutout`` > 0 zeros a square of that side (DeVries & Taylor; 8 px on CIFAR-100) in every
    training image inside ``forward`` (after normalisation, as their code does), using peerkd.data.augment.cutout;
    the centres come from torch's default generator on the batch's device, whose state the trainer checkpoints,
    so resumes stay exact. With ``icl`` each view gets its own square, without it all students share one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from peerkd.data.augment import cutout
from peerkd.losses import hard_ce, kd_kl_probs
from peerkd.methods.parts import kdcl_targets as rules
from peerkd.core.method import DataRequest, EpochContext, StepOutput
from peerkd.methods.parts.cohort import CohortMethod, build_cohort, run_cohort
from peerkd.core.registry import register_method

TargetRule = Literal["naive", "linear", "minlogit", "general"]  # the soft-target rules of section 3.2


@register_method("kdcl")
class KDCL(CohortMethod):
    """KDCL (Guo et al. 2020): students of any architectures distil from an ensemble target (Naive / Linear /
    MinLogit / General), optionally each on its own augmentation (ICL)."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet32", "wrn16_2"])  # the students: the CIFAR pair
        model_options: dict = field(default_factory=dict)  # keyword arguments for every student's factory
        target: TargetRule = "general"  # soft-target rule (General: best on CIFAR, Tab. 7)
        temperature: float = 2.0  # T of the KL, dimensionless (the paper's T = 2, section 4.2)
        kd_weight: float = 1.0  # lambda of eq. 2, dimensionless (the paper's 1; Table 9 sweeps 0.1-10)
        icl: bool = True  # invariant collaborative learning: one augmented view per student (the best rows, Tab. 7)
        naive_scope: rules.Scope = "sample"  # Naive: the lowest-CE student per "sample" (eq. 4, one label y) or per
        # "batch"
        linear_scope: rules.Scope = "sample"  # Linear: one combination per "sample" (eq. 5 as eq. 4) or per "batch"
        linear_iterations: int = 30  # Linear solver iterations (m = 2: halvings of [0, 1], 2^-30; m > 2: EG steps)
        heldout_per_class: int = 50  # General: training images per class held out (50 on CIFAR-100, 20 on ImageNet)
        general_constraint: rules.GeneralConstraint = "simplex"  # General: "simplex" (w in [0, 1], the text) or
        # "none" (eq. 11 as is)
        cutout: int = 0  # side in pixels of a Cutout square per training image, 0 = off (Table 10 uses 8 on CIFAR)

    def __init__(self, options, task):
        super().__init__(options, task)
        from peerkd.core.errors import ConfigError

        if len(options.models) < 2:
            raise ConfigError("method.models: KDCL needs at least two students")
        if options.target == "general" and options.heldout_per_class < 1:
            raise ConfigError("method.heldout_per_class: KDCL-General needs a held-out split (at least 1 per class)")
        if options.cutout < 0:
            raise ConfigError(f"method.cutout: must be 0 (off) or a side in pixels, got {options.cutout}")
        self.models = build_cohort(options.models, task.num_classes, options.model_options)
        count = len(options.models)
        self.register_buffer("general_weights", torch.full((count,), 1.0 / count))  # eq. 11's w; equal at start

    @classmethod
    def data_request(cls, options) -> DataRequest:
        return DataRequest(views=len(options.models) if options.icl else 1,
                           heldout_per_class=options.heldout_per_class if options.target == "general" else 0)

    # -- training ---------------------------------------------------------------------------------------------
    def _inputs(self, batch) -> torch.Tensor | list[torch.Tensor]:
        """The images the students train on, with Cutout applied when asked: one view per student under ICL (a
        list), else the one view every student shares (a tensor, as :func:`run_cohort` takes it)."""
        count, side = len(self.models), self.options.cutout
        views = [batch.view(i) for i in range(count)] if self.options.icl else [batch.view(0)]
        if side:
            views = [cutout(x, self._cutout_centres(x), side) for x in views]
        return views if self.options.icl else views[0]

    @staticmethod
    def _cutout_centres(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.randint(0, h, (x.shape[0], 1), device=x.device)
        cols = torch.randint(0, w, (x.shape[0], 1), device=x.device)
        return torch.cat([rows, cols], 1)

    def soft_target(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The target distribution ``(B, K)`` at temperature T from the students' detached logits ``(m, B, K)``,
        and detached logs describing it."""
        opts, t, logs = self.options, self.options.temperature, {}
        if opts.target == "general":
            for i, w in enumerate(self.general_weights):
                logs[f"weight{i}"] = w.detach()
            return rules.general_target(logits, self.general_weights, t), logs
        if opts.target == "naive":
            z_t, chosen = rules.naive_target(logits, labels, opts.naive_scope)
            for i in range(logits.shape[0]):
                logs[f"picked{i}"] = (chosen == i).float().mean()
        elif opts.target == "linear":
            z_t, alpha = rules.linear_target(logits, labels, opts.linear_iterations, opts.linear_scope)
            for i, a in enumerate(alpha.mean(0)):
                logs[f"alpha{i}"] = a
        else:
            z_t = rules.minlogit_target(logits, labels)
        return torch.softmax(z_t.float() / t, dim=1), logs

    def forward(self, batch) -> StepOutput:
        logits = run_cohort(self.models, self._inputs(batch))
        # the rules run in float32 even under bf16 autocast (Linear's solver would otherwise do bf16 matmuls)
        with torch.no_grad(), torch.autocast(logits[0].device.type, enabled=False):
            target, logs = self.soft_target(torch.stack([z.detach().float() for z in logits]), batch.y)
        total = 0.0
        for i, z in enumerate(logits):
            ce = hard_ce(z, batch)
            kl = kd_kl_probs(z, target, self.options.temperature)
            total = total + ce + self.options.kd_weight * kl
            logs[f"ce{i}"], logs[f"kl{i}"] = ce.detach(), kl.detach()
        return StepOutput(total, logs)

    def on_epoch_end(self, ctx: EpochContext) -> None:
        """KDCL-General: re-estimate the ensemble weights (eq. 10-11) on the held-out split."""
        if self.options.target != "general":
            return
        if ctx.heldout is None:
            raise RuntimeError("KDCL-General needs the held-out split it asked for (DataRequest.heldout_per_class); "
                               "the trainer passed none")
        covariance = self.heldout_covariance(ctx.heldout, ctx.autocast)
        self.general_weights.copy_(rules.general_weights(covariance, self.options.general_constraint))

    @torch.no_grad()
    def heldout_covariance(self, loader, autocast=None) -> torch.Tensor:
        """Eq. 10: ``C_ij = 1/N sum_k (f_i(x_k) - 1)(f_j(x_k) - 1)`` over the held-out images (eval mode)."""
        was_training = self.training
        self.eval()
        count = len(self.models)
        total = torch.zeros(count, count, dtype=torch.float64, device=self.general_weights.device)
        seen = 0
        for batch in loader:
            with (autocast() if autocast is not None else contextlib.nullcontext()):
                logits = torch.stack(run_cohort(self.models, batch.x)).float()
            errors = rules.target_class_errors(logits, batch.y).double()  # (B, m)
            total += errors.t() @ errors
            seen += batch.y.shape[0]
        self.train(was_training)
        return total / max(seen, 1)

    # -- evaluation and deployment ------------------------------------------------------------------------------
