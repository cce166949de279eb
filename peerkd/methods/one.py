"""ONE: Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018.

One network with a shared trunk and m branches; a gate on the trunk's map weights the branch logits into an
ensemble teacher:

    g   = softmax(ReLU(BN(FC(pool(trunk)))))          (one weight per branch, sum 1)
    z_e = sum_i g_i z_i
    L   = sum_i CE(z_i, y) + CE(z_e, y) + w(e) * sum_i T^2 KL(softmax(z_e/T) || softmax(z_i/T)),   T = 3

Readings: the branches own the last stage and the classifier (``split_at`` unset), as ONE's CIFAR ResNets; the gate
has BN and ReLU between FC and softmax as in ONE's code (``gate_bn_relu``); the teacher ``z_e`` is detached in the KL
(``target_gradient: none``): ONE's published ``KLLoss`` takes ``softmax(z_e / T).data`` with ``requires_grad=False``,
so the gate learns from the ensemble CE alone and no branch is pulled towards the students through the teacher.
``target_gradient: weights`` detaches only the branch logits inside ``z_e`` (the gate also learns from the KL),
``full`` detaches nothing: the ONE of OKDDip's code (DefangChen/OKDDip-AAAI2020 ``train_one.py`` with
``models/model_cifar/resnet_one.py``, whose model returns the gated ensemble with its graph), the ONE the MDE, CSS
and CutnMix tables ran. Each side is held against its code step for step: ``none`` against Lan1991Xu/ONE_NeurIPS2018
(``tests/golden/test_one.py``), ``full`` against OKDDip's (``tests/golden/test_okddip.py``). Both codes add 1e-7 to
the teacher's probabilities inside the KL; peerkd does not (at most ``classes x 1e-7`` of the KL's gradient).
OKDDip's ``vgg_one.py`` runs every branch twice in ONE mode (the first pass discarded), so its branches' BatchNorm
statistics move twice a step; peerkd runs them once (the gradients are those of the second pass either way). The KL
weight ramps up as ``w(e) = exp(-5 (1 - e/80)^2)`` over the first 80 epochs, as ONE's published ``cifar_one.py`` does
(``consistency_rampup = 80``; the paper's loss does not show it); ``rampup_epochs: 0`` gives the paper's constant weight
1.

``cd_weight`` (0: ONE has none) adds MDE's classifier-diversification loss ``gamma L_cd`` over the m branches'
classifiers (paper 001, eq. 5; the one implementation,
:func:`peerkd.methods.parts.multibranch.classifier_diversification`, with ``cd_product`` its reading): MDE's Table 6
"Gate + CD" row is ONE with it (its "Gate" row equals ONE's Table 2 number).

``predict`` keys: ``branch0 .. branch{m-1}`` and ``ensemble`` (the gated teacher's logits). ONE deploys one branch
(its tables report their mean); ``export(key)`` gives branch ``key`` (default ``branch0``) as a plain model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl
from peerkd.methods.parts.multibranch import (
    BranchGroup,
    CdProduct,
    GateTarget,
    TargetGradient,
    classifier_diversification,
    sigmoid_rampup,
)

OneTargetGradient = Literal["none", TargetGradient]  # "none": the teacher detached in the KL, or the two of OKDDip


@register_method("one")
class ONE(Method):
    """ONE (Lan et al. 2018): gated on-the-fly ensemble of branches distilled back into every branch."""

    @dataclass
    class Options:
        model: str = "resnet32"  # backbone of every branch (a registered model name)
        model_options: dict = field(default_factory=dict)  # keyword arguments for the backbone's factory
        branches: int = 3  # m: ONE's default of 3 branches (MDE's tables run m = 4: set it in the config)
        split_at: int | None = None  # stages shared by the branches; None: all but the last (ONE's ResNets)
        gate_bn_relu: bool = True  # BN + ReLU between the gate's FC and softmax, as ONE's code
        temperature: float = 3.0  # T of the KL (ONE uses 3)
        kl_weight: float = 1.0  # weight of the KL term relative to CE (1 in ONE)
        ensemble_ce: bool = True  # CE on the gated ensemble too (trains the gate); ONE's loss has it
        target_gradient: OneTargetGradient = "none"  # "none": teacher detached in the KL (ONE's code); "weights";
        # "full" (see above)
        rampup_epochs: float = 80.0  # epochs of the sigmoid ramp-up of the KL weight (ONE's code: 80); 0: none
        cd_weight: float = 0.0  # gamma of MDE's CD loss over the branches' classifiers (0: ONE has none; 5e-8: MDE's)
        cd_product: CdProduct = "outer"  # the reading of W_i^T W_j in the CD loss (see multibranch.CdProduct)

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # branches split a backbone's stages: ONE's trunk + tails

    def __init__(self, options, task):
        super().__init__(options, task)
        self.group = BranchGroup(options.model, task.num_classes, options.branches, options.split_at,
                                 model_options=options.model_options)
        self.gate = GateTarget(self.group.trunk_channels, options.branches, options.gate_bn_relu)
        self.branch_ids = list(range(options.branches))
        self.register_buffer("distill_scale", torch.tensor(sigmoid_rampup(0, options.rampup_epochs)))

    def on_epoch_start(self, epoch, epochs):
        self.distill_scale.fill_(sigmoid_rampup(epoch, self.options.rampup_epochs))

    def gated_ensemble(self, out) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_e, g, z)``: the gated ensemble's logits ``sum_i g_i z_i`` (B, C), the gate's weights (B, m, 1) and
        the branch logits (B, m, C), in fp32; the one computation of the ensemble, for training and ``predict``."""
        weights = self.gate.weights(out, self.branch_ids).unsqueeze(-1)
        logits = torch.stack([z.float() for z in out.logits], 1)
        return (weights * logits).sum(1), weights, logits

    def forward(self, batch) -> StepOutput:
        opts = self.options
        out = self.group(batch.view(0))
        ensemble, weights, logits = self.gated_ensemble(out)
        if opts.target_gradient == "none":
            teacher = ensemble.detach()
        elif opts.target_gradient == "weights":
            teacher = (weights * logits.detach()).sum(1)
        else:
            teacher = ensemble
        ce = torch.stack([hard_ce(z, batch) for z in out.logits]).sum()
        kl = torch.stack([kd_kl(z, teacher, opts.temperature) for z in out.logits]).sum()
        loss = ce + self.distill_scale * opts.kl_weight * kl
        logs = {"ce": ce.detach(), "kl": kl.detach()}
        if opts.ensemble_ce:
            ce_ensemble = hard_ce(ensemble, batch)
            loss = loss + ce_ensemble
            logs["ce_ensemble"] = ce_ensemble.detach()
        if opts.cd_weight:
            cd = classifier_diversification(self.group.classifier_weights(), opts.cd_product)
            loss = loss + opts.cd_weight * cd
            logs["cd"] = cd.detach()
        return StepOutput(loss, logs)

    def predict(self, x):
        out = self.group(x)
        preds = {f"branch{i}": z for i, z in enumerate(out.logits)}
        preds["ensemble"] = self.gated_ensemble(out)[0]
        return preds

    def diversity_groups(self):
        return {"branches": [f"branch{i}" for i in self.branch_ids]}

    def export(self, key=None):
        key = key or "branch0"
        valid = [f"branch{i}" for i in self.branch_ids]
        if key not in valid:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(valid)}")
        return self.group.export(int(key[len("branch"):]))
