"""CutⁿMix online distillation. Shen, Xu, Yang, Li, Guo, "Mixed Sample Augmentation for Online Distillation"
(paper 003 of /work/shared/papers).

J peers (J = 2 in the paper). Every peer sees its own augmentation of the batch, mixed by CutⁿMix (eq. 5-7): the
same partner permutation and the same lambda for every peer, a box placed independently per peer. Peer j's loss
(eq. 8), plus the peer teacher's own cross-entropy (Algorithm 1, lines 10 and 12):

    L^j   = CE(z^j, y~) + alpha * L_DML^j + beta * L_MMD^j + gamma * L_PT^j
    L_DML^j = 1/(J-1) sum_{k != j} tau^2 KL(softmax(z^k / tau) || softmax(z^j / tau))                 (eq. 4)
    L_MMD^j = 1/(J-1) sum_{k != j} || mean_i f_i^j - mean_i f_i^k ||_2^2                              (eq. 9)
    L_PT^j  = tau^2 KL(softmax(z^PT / tau) || softmax(z^j / tau)),   z^PT = g([f^1, ..., f^J])         (eq. 10)
    L     = sum_j L^j + CE(z^PT, y~)

with alpha = 0.6, beta = 0.3, gamma = 0.1, tau = 3, f^j peer j's pooled penultimate feature (``head.features``),
g a linear classifier over the concatenated features (the "peer teacher"), and y~ the mixed label (CE of a mixed
batch is ``lam * CE(y) + (1 - lam) * CE(y_b)``).

Readings where the paper is ambiguous:
- KL direction: eq. 4 and 10 write ``D(student, teacher)``; as in Hinton's KD and DML, the target (other peer or
  the peer teacher) is the first argument of the KL and is detached: each L^j trains peer j only. Likewise the other
  peers' feature means in L_MMD^j are detached (``detach_targets``), so the pair (j, k) pulls both means together
  through L^j and L^k, not twice through each.
- The peer teacher g is trained by its own CE only, on detached peer features (Algorithm 1 updates "peer students
  by eq. 8" and then "the peer teacher" separately), so no teacher gradient reaches the peers except through
  L_PT's target, which is detached too. ``teacher_trains_peers: true`` lets g's CE reach the peers' features
  instead (PCL's peer-ensemble reading).
- tau^2 multiplies L_DML as it multiplies L_PT: eq. 1 defines every KD term of the paper as ``tau^2 D_KL``, eq. 4
  writes the DML objective as ``alpha * tau^2 * L_DML`` with L_DML the bare KL, eq. 10 puts tau^2 inside L_PT, and
  eq. 8 only re-uses "L_DML in Eq.(4)" beside L_PT; reading eq. 8 without tau^2 would weigh the DML term at 0.6 / 9
  = 0.067 against the peer teacher's 0.1 * 9 = 0.9 in bare-KL units although alpha = 0.6 > gamma = 0.1 (with
  tau^2: 5.4 against 0.9, the order alpha > gamma states). ``dml_tau_squared: false`` is the literal eq. 8 (a 1/9
  smaller DML term at tau = 3). The MMD is the linear-kernel MMD of eq. 9 (``peerkd.losses.mean_feature_mmd``), no
  tau.
- The boxes (sec. 2.2: each mask M^j is drawn "following the previous sampling strategy in [9]"): Yun et al.'s box
  law, as the CutMix row's -- sides sqrt(1 - lambda) of the image's, centre uniform, clipped at the border -- drawn
  independently per peer; every peer's label weight is one number (eq. 6-7: the peers' labels agree exactly), the
  peers' mean real (clipped) box area, as Yun et al.'s code sets lambda to the real area. Mixing probability 0.5
  in the configs, the CIFAR recipe of [9] that the CutMix row keeps ("original settings", sec. 3.2), so the two
  rows mix alike (mean pasted area 0.31 of the image in both). ``data.mixing_box: inside`` keeps every box inside
  the image at the nominal size (the label weight exact for every peer; mean pasted area 0.50);
  ``data.mixing_prob: 1.0`` mixes every batch (see peerkd.data.mixing).
- Ablation (its Table 2): ``use_mmd`` and ``use_peer_teacher`` drop L_MMD / L_PT (and g); ``mixing: cutmix`` with
  ``separate_views: false`` gives the Fig. 1 setting (DML on the very same CutMix batch for every peer; with separate
  views the peers share the box but not the crops and flips), ``mixing: none`` asks for none (``data.mixing``
  decides).

Predict keys: ``peer{j}``, ``ensemble`` (mean of the peers' probabilities) and ``peer_teacher`` (g on the peers'
features). Identical peers run as the run's ``trainer.members`` says (:mod:`peerkd.models.execution`); the maths,
checkpoints and exports are those of separate peers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from peerkd.losses import hard_ce, kd_kl, mean_feature_mmd
from peerkd.core.method import DataRequest, StepOutput
from peerkd.methods.parts.cohort import (CohortMethod, build_cohort, cohort_predictions, feature_widths,
                                   run_cohort_features)
from peerkd.core.registry import register_method


@register_method("cutnmix")
class CutnMix(CohortMethod):
    """CutⁿMix online distillation (Shen et al.): DML + feature MMD + a peer-teacher classifier, on CutⁿMix data."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet32", "resnet32"])  # the J peers (J = 2 in the paper)
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory
        temperature: float = 3.0  # tau of L_DML and L_PT (section 3.1: tau = 3)
        dml_weight: float = 0.6  # alpha of eq. 8 (section 3.1)
        mmd_weight: float = 0.3  # beta of eq. 8 (section 3.1)
        peer_teacher_weight: float = 0.1  # gamma of eq. 8 (section 3.1)
        use_mmd: bool = True  # Table 2 ablation switch for L_MMD
        use_peer_teacher: bool = True  # Table 2 ablation switch for the peer teacher g and L_PT
        mixing: Literal["cutnmix", "cutmix", "none"] = "cutnmix"  # loader mixing: "cutnmix" (eq. 5-7), "cutmix" (one
        # box, Fig. 1), "none" (data.mixing)
        separate_views: bool = True  # each peer its own augmentation (section 2.2); False: one view for all peers
        detach_targets: bool = True  # targets of L_DML, L_MMD and L_PT carry no gradient (each L^j trains peer j)
        teacher_trains_peers: bool = False  # True: the peer teacher's CE also reaches the peers' features
        dml_tau_squared: bool = True  # L_DML carries tau^2 (eq. 4's objective); False: eq. 8's bare KL of eq. 4

    @classmethod
    def model_requirements(cls, options):
        return {"models": ("features",)}  # feature MMD and the peer teacher read every peer's pooled features

    def __init__(self, options, task):
        super().__init__(options, task)
        from peerkd.core.errors import ConfigError

        if len(options.models) < 2:
            raise ConfigError("method.models: CutnMix needs at least two peers")
        if options.mixing == "cutnmix" and not options.separate_views:
            raise ConfigError("method.mixing: cutnmix places one box per peer view; it needs separate_views: true")
        self.models = build_cohort(options.models, task.num_classes, options.model_options)
        self.peer_teacher = None
        if options.use_peer_teacher:
            width = sum(feature_widths(self.models))
            self.peer_teacher = nn.Linear(width, task.num_classes)  # g over the concatenated peer features

    @classmethod
    def data_request(cls, options):
        views = len(options.models) if options.separate_views else 1
        return DataRequest(views=views, mixing="" if options.mixing == "none" else options.mixing)

    def _target(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach() if self.options.detach_targets else t

    def forward(self, batch) -> StepOutput:
        opts, n = self.options, len(self.models)
        inputs = [batch.view(j) for j in range(n)] if opts.separate_views else batch.view(0)
        outputs = run_cohort_features(self.models, inputs)
        features = [f for f, _ in outputs]
        logits = [z for _, z in outputs]
        logs: dict[str, torch.Tensor] = {}
        total = 0.0
        teacher_logits = None
        if self.peer_teacher is not None:
            joint = torch.cat(features if opts.teacher_trains_peers else [f.detach() for f in features], dim=1)
            teacher_logits = self.peer_teacher(joint)
            teacher_ce = hard_ce(teacher_logits, batch)
            total = total + teacher_ce
            logs["ce_teacher"] = teacher_ce.detach()
        for j in range(n):
            ce = hard_ce(logits[j], batch)
            dml = sum(kd_kl(logits[j], self._target(logits[k]), opts.temperature) for k in range(n) if k != j) / (n - 1)
            if not opts.dml_tau_squared:
                dml = dml / (opts.temperature * opts.temperature)  # kd_kl carries tau^2; eq. 8 read literally has none
            loss_j = ce + opts.dml_weight * dml
            logs[f"ce{j}"], logs[f"dml{j}"] = ce.detach(), dml.detach()
            if opts.use_mmd:
                others = [self._target(features[k]) for k in range(n) if k != j]
                mmd = sum(mean_feature_mmd(features[j], f) for f in others) / (n - 1)
                loss_j = loss_j + opts.mmd_weight * mmd
                logs[f"mmd{j}"] = mmd.detach()
            if teacher_logits is not None:
                pt = kd_kl(logits[j], teacher_logits.detach(), opts.temperature)
                loss_j = loss_j + opts.peer_teacher_weight * pt
                logs[f"pt{j}"] = pt.detach()
            total = total + loss_j
        return StepOutput(total, logs)

    def predict(self, x):
        outputs = run_cohort_features(self.models, x)
        out = cohort_predictions([z for _, z in outputs])
        if self.peer_teacher is not None:
            out["peer_teacher"] = self.peer_teacher(torch.cat([f for f, _ in outputs], dim=1))
        return out
