"""Tf-KD: teacher-free knowledge distillation. Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge Distillation via
Label Smoothing Regularization", CVPR 2020. Two variants (``variant``):

self (Tf-KD_self, eq. 7): a network trained normally earlier (a peerkd run folder, loaded as in ``kd``) teaches a
fresh copy of itself:

    L = (1 - alpha) * CE(z, y) + alpha * multiplier * T^2 * KL(softmax(z_t / T) || softmax(z / T))

reg (Tf-KD_reg, eq. 8-9): a hand-made "virtual teacher" that puts probability ``a`` on the true class and spreads
``1 - a`` uniformly over the other K - 1 classes, softened by temperature T:

    p^d(k) = a if k = y else (1 - a) / (K - 1),     p^d_T = softmax(p^d / T)
    L = (1 - alpha) * CE(z, y) + alpha * multiplier * KL(p^d_T || softmax(z / T_s))

Readings: "softened" p^d is read as the softmax of the probabilities divided by T (``virtual_softening:
softmax``), as in the authors' released implementation; ``power`` gives the alternative (p^d)^(1/T) renormalised.
The student side is softened by the same T (T_s = T, ``soften_student: true``), as the paper's eq. 9 writes it
(``D_KL(p^d_T, p_T)``); the authors' released implementation compares with the unsoftened student (T_s = 1), which is
``soften_student: false``.
``virtual_softening: none`` leaves p^d unsoftened (only the student is softened): winycg/Self-KD-Lib's
``methods/tf_kd_reg.py`` reading (``-sum_k p^d_k log softmax(z / T)_k / T``, averaged over the batch, with ``a`` =
1 - epsilon = 0.9), whose cross-entropy differs from the KL here by the constant entropy of p^d.

The KL's reduction and scale (``kl_reduction``, ``multiplier``; held against the release in
``tests/golden/test_tfkd.py``): ``batchmean`` (default) sums the KL over the K classes and averages over the batch
(the KL of the paper's equations, per sample); ``elementmean`` averages over the batch and the classes, 1/K of it, as
the release's ``nn.KLDivLoss()`` (its default reduction) computes both terms (yuanli2333/Teacher-free-Knowledge-
Distillation ``my_loss_function.py``: ``loss_kd_self`` = element-mean KL x T^2 x ``params.multiplier``;
``loss_kd_regularization`` = element-mean KL x ``params.multiplier``, no T^2). The release's settings are per
experiment (``experiments/.../params.json``: ``multiplier`` 50 for its CIFAR-100 ResNet-18 self-teacher at T = 6,
alpha = 0.95; 100 for its CIFAR-100 ResNet-18 reg at T = 20, alpha = 0.1). A config that cites the release sets
``kl_reduction: elementmean`` and the release's multiplier, and then runs the release's scale at any K (with
``batchmean`` the same multiplier would be K x the release's: 2x at K = 100 for the self-teacher's 50, 0.2x at
K = 10 with multiplier 1). With a mixed batch the virtual teacher is the lam-weighted mixture of the two labels'
virtual teachers. The self teacher stays in eval mode and receives no gradient; its weights are part of this
method's state (``teacher_model`` records its architecture), as in ``kd``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from peerkd.losses import hard_ce, kd_kl
from peerkd.core.method import Method, StepOutput
from peerkd.methods.parts.cohort import build_cohort, export_member
from peerkd.methods.kd import KD
from peerkd.core.registry import register_method
from peerkd.models import build_model

Softening = Literal["softmax", "power", "none"]  # how T softens the virtual teacher's p^d ("none": p^d as it is)
KLReduction = Literal["batchmean", "elementmean"]  # the KL summed over classes and averaged over the batch, or
# averaged over batch x classes (the release's nn.KLDivLoss() default, 1/K of batchmean)


def virtual_teacher(labels: torch.Tensor, num_classes: int, correct_prob: float, temperature: float,
                    softening: Softening = "softmax") -> torch.Tensor:
    """Tf-KD's virtual teacher distribution ``(B, K)`` for integer ``labels``, softened by ``temperature``."""
    base = torch.full((labels.shape[0], num_classes), (1.0 - correct_prob) / (num_classes - 1),
                      device=labels.device, dtype=torch.float32)
    base.scatter_(1, labels[:, None], correct_prob)
    if softening == "softmax":
        return F.softmax(base / temperature, dim=-1)
    if softening == "power":
        powered = base.pow(1.0 / temperature)
        return powered / powered.sum(-1, keepdim=True)
    if softening == "none":
        return base
    raise ValueError(f"virtual_softening: '{softening}' is not softmax or power")


@register_method("tfkd")
class TfKD(Method):
    """Teacher-free KD (Yuan et al. 2020): a self-trained teacher (variant self) or a virtual teacher (reg)."""

    @dataclass
    class Options:
        variant: Literal["reg", "self"] = "reg"  # "reg" (virtual teacher, needs nothing) or "self" (teacher = an
        # earlier run of the net)
        model: str = "resnet32"  # the network trained
        model_options: dict = field(default_factory=dict)  # keyword arguments for its factory
        alpha: float = 0.1  # weight of the teacher term; 0.1: the release's CIFAR-100 ResNet-18 reg_alpha
        # (experiments/base_experiments/base_resnet18/params.json; its self-teacher's is 0.95, set per config)
        temperature: float = 20.0  # T; 20: that file's reg_temperature (the self-teacher's is 6, set per config)
        correct_prob: float = 0.99  # a: the virtual teacher's probability of the true class (the release's
        # my_loss_function.py; paper: 0.9 or above)
        multiplier: float = 1.0  # scale of the teacher term (both variants); 1: the paper's equations; the release's
        # params.json values (50 self / 100 reg on CIFAR-100 ResNet-18) go with kl_reduction: elementmean
        kl_reduction: KLReduction = "batchmean"  # batchmean: the paper's per-sample KL; elementmean: the release's
        virtual_softening: Softening = "softmax"  # how T softens p^d: "softmax" (released code) or "power"
        soften_student: bool = True  # reg: divide the student's logits by T too (eq. 9's p_T); false: released code
        teacher_run: str = ""  # self: run folder of the trained network (as kd's teacher_run)
        teacher_key: str = ""  # self: predict key of that run to export ("" = its default)
        teacher_model: str = ""  # self: filled in from the teacher run: its registered architecture
        teacher_model_options: dict = field(default_factory=dict)  # self: filled in likewise

    def __init__(self, options, task):
        super().__init__(options, task)
        self.models = build_cohort([options.model], task.num_classes, options.model_options)
        self.teacher = None
        if options.variant == "self":
            if task.restoring and options.teacher_model:
                teacher = build_model(options.teacher_model, task.num_classes, **options.teacher_model_options)
            else:
                teacher = KD._load_teacher(options, task)  # the kd method's run-folder loading, same options
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = teacher

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the self-teacher is fixed: its BatchNorm keeps its running statistics
        return self

    def forward(self, batch) -> StepOutput:
        opts = self.options
        x = batch.view(0)
        logits = self.models[0](x)
        ce = hard_ce(logits, batch)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            kl = kd_kl(logits, teacher_logits, opts.temperature) * opts.multiplier
        else:
            k = logits.shape[-1]
            target = virtual_teacher(batch.y, k, opts.correct_prob, opts.temperature, opts.virtual_softening)
            if batch.y_b is not None:
                other = virtual_teacher(batch.y_b, k, opts.correct_prob, opts.temperature, opts.virtual_softening)
                lam = batch.lam.float().reshape(-1, 1) if batch.lam.dim() else batch.lam.float()
                target = lam * target + (1 - lam) * other
            student_t = opts.temperature if opts.soften_student else 1.0
            log_p = F.log_softmax(logits.float() / student_t, dim=-1)
            kl = (target * (target.clamp_min(1e-30).log() - log_p)).sum(-1).mean() * opts.multiplier
        if opts.kl_reduction == "elementmean":
            kl = kl / logits.shape[-1]  # the mean over the K classes too: nn.KLDivLoss()'s default, as the release
        loss = (1 - opts.alpha) * ce + opts.alpha * kl
        return StepOutput(loss, {"ce": ce.detach(), "kl": kl.detach()})

    def predict(self, x):
        out = {"net": self.models[0](x)}
        if self.teacher is not None:
            out["teacher"] = self.teacher(x)
        return out

    def export(self, key=None):
        if key in (None, "net"):
            return export_member(self.models, "peer0")
        raise KeyError(f"cannot export '{key}': Tf-KD exports 'net'")
