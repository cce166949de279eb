"""CL: Song & Chai, "Collaborative Learning for Deep Neural Networks", NeurIPS 2018.

H classifier heads of one backbone trained together, each from the labels and from the consensus of the others:

    q_h^t = softmax( (1/(H-1)) sum_{j != h} z_j / T )          (the other heads' mean logits, no gradient)
    L     = sum_h [ beta * CE(z_h, y) + (1 - beta) * T^2 KL(q_h^t || softmax(z_h / T)) ]

Heads share layers hierarchically (intermediate-level representation sharing, ILR): ``split_stages`` names the
stages at which the graph forks and ``fanouts`` how many children each fork has, so ``split_stages: [1, 2]``,
``fanouts: [2, 2]`` shares stem + stage 1 by all four heads, stage 2 by pairs, and gives each head its own stage 3.
The default, ``[2]`` / ``[4]``, is the single-fork CL-ILR of the ONE/OKDDip comparisons (4 heads, own stage 3 each).
Backprop rescaling: at every fork the gradient flowing back into the shared layer is multiplied by 1/fanout, so a
layer shared by n heads receives the mean rather than the sum of their gradients (``rescale_gradient``).

Readings: the consensus target is detached (the paper treats it as a constant; ``detach_target``); beta = 0.5 and
T = 2 are the paper's CIFAR values; the KL carries the usual T^2 factor.

``loss_form: okddip`` runs the CL-ILR of OKDDip's code instead (DefangChen/OKDDip-AAAI2020 ``train_one.py --avg
--bpscale`` with ``models/model_cifar/resnet_one.py``: the numbers the MDE and CSS tables quote for CL):

    L = sum_h CE(z_h, y) + w(e) * kl_weight * sum_h T^2 KL(q_h^t || softmax(z_h / T)),   w(e) = exp(-5 (1 - e/80)^2)

with ``q_h^t`` the other heads' mean logits *not* detached (their model returns the consensus as a graph node), T = 3,
one fork after stage 2 into 4 heads and the gradient into the trunk divided by 4 (their ``ILR``). That recipe is
``loss_form: okddip, temperature: 3, rampup_epochs: 80, detach_target: false`` (held against their code in
``tests/golden/test_okddip.py``). Both codes' KL adds 1e-7 to the teacher's probabilities; peerkd does not (a relative
difference of at most ``classes x 1e-7`` in the KL's gradient). ``predict`` keys: ``head0 .. head{H-1}``
and ``ensemble`` (the mean of the heads' probabilities); ``export(key)`` gives head ``key`` (default ``head0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl, mean_probs_logits
from peerkd.methods.parts.multibranch import scale_gradient
from peerkd.methods.parts.rampup import sigmoid_rampup
from peerkd.models import build_model
from peerkd.models.members import build_members


class HeadTree(nn.Module):
    """A backbone's stem and stages arranged as a tree with one leaf (head) per classifier.

    Level 0 is stem + ``stages[:s_1]``; level l holds ``stages[s_l:s_{l+1}]`` once per group of heads that share it
    (``prod(fanouts[:l])`` groups); the last level ends with each head's own classifier. A level's segments, and the
    classifiers, are identical member groups (:mod:`peerkd.models.members`) executing as the run's ``trainer.members``
    says (:mod:`peerkd.models.execution`), with the state_dict keys of plain ModuleLists in every execution.
    """

    def __init__(self, name: str, num_classes: int, split_stages: list[int], fanouts: list[int], model_options: dict,
                 rescale_gradient: bool = True):
        super().__init__()
        if len(split_stages) != len(fanouts) or not split_stages:
            raise ConfigError("method.split_stages / method.fanouts: give one fanout per split stage (at least one)")
        heads = math.prod(fanouts)
        backbones = [build_model(name, num_classes, key="method.model", **model_options) for _ in range(heads)]
        depth = len(backbones[0].stages)
        if sorted(set(split_stages)) != list(split_stages) or split_stages[0] < 1 or split_stages[-1] > depth:
            raise ConfigError(f"method.split_stages: increasing stage indices in 1..{depth} for {name}, "
                               f"got {split_stages}")
        if any(f < 1 for f in fanouts) or heads < 2:
            raise ConfigError(f"method.fanouts: positive, with at least 2 heads in all, got {fanouts}")
        self.name, self.num_classes, self.model_kwargs = name, num_classes, dict(model_options)
        self.fanouts, self.heads, self.rescale = list(fanouts), heads, rescale_gradient
        self.bounds = [0, *split_stages, depth]  # level l covers stages[bounds[l]:bounds[l+1]]
        first = backbones[0]
        self.stem = first.stem
        self.trunk_stages = nn.ModuleList(list(first.stages[:split_stages[0]]))
        self.levels = nn.ModuleList()
        for level in range(1, len(self.bounds) - 1):
            groups = math.prod(fanouts[:level])
            owners = [g * (heads // groups) for g in range(groups)]  # the first head of each group lends its stages
            lo, hi = self.bounds[level], self.bounds[level + 1]
            # a segment is a Sequential of stages: the keys of a ModuleList of them, and one callable to fuse
            self.levels.append(build_members([nn.Sequential(*backbones[o].stages[lo:hi]) for o in owners]))
        self.classifiers = build_members([b.head for b in backbones])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        for stage in self.trunk_stages:
            x = stage(x)
        current = [x]
        for level, segments in enumerate(self.levels):
            fanout = self.fanouts[level]
            inputs = [current[g // fanout] for g in range(len(segments))]
            if self.rescale:
                inputs = [scale_gradient(h, 1.0 / fanout) for h in inputs]
            current = segments.run(inputs)
        return self.classifiers.run(current)

    def export_head(self, h: int) -> nn.Module:
        model = build_model(self.name, self.num_classes, **self.model_kwargs)
        model.stem.load_state_dict(self.stem.state_dict())
        for i, stage in enumerate(self.trunk_stages):
            model.stages[i].load_state_dict(stage.state_dict())
        for level, segments in enumerate(self.levels, start=1):
            group = h // (self.heads // math.prod(self.fanouts[:level]))
            for k, stage in enumerate(segments.export(group)):
                model.stages[self.bounds[level] + k].load_state_dict(stage.state_dict())
        model.head.load_state_dict(self.classifiers.member_state_dict(h))
        return model.to(next(self.parameters()).device).eval()


ClLossForm = Literal["paper", "okddip"]  # the two weightings of CE and KL (see the module docstring)


@register_method("cl")
class CL(Method):
    """Collaborative learning (Song & Chai 2018): hierarchical heads, consensus targets, backprop rescaling."""

    @dataclass
    class Options:
        model: str = "resnet32"  # backbone of every head (a registered model name)
        model_options: dict = field(default_factory=dict)  # keyword arguments for the backbone's factory
        split_stages: list[int] = field(default_factory=lambda: [2])  # stage indices where the graph forks
        fanouts: list[int] = field(default_factory=lambda: [4])  # children per fork; heads = their product
        hard_weight: float = 0.5  # beta: weight of CE, 1 - beta of the KL (the paper's 0.5)
        temperature: float = 2.0  # T of the consensus soft target (the paper's CIFAR value)
        rescale_gradient: bool = True  # backprop rescaling by 1/fanout at each fork (the paper's ILR)
        detach_target: bool = True  # the consensus target carries no gradient (treated as a constant)
        loss_form: ClLossForm = "paper"  # "paper": beta CE + (1 - beta) KL; "okddip": CE + w(e) kl_weight KL (above)
        kl_weight: float = 1.0  # "okddip" form: the KL's weight (their alpha = 1); unused by the paper's form
        rampup_epochs: float = 0.0  # epochs of the sigmoid ramp-up w(e) of the KL weight (0: none, the paper's;
        # OKDDip's code: 80)

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # the head tree cuts the backbone at its stages

    def __init__(self, options, task):
        super().__init__(options, task)
        self.tree = HeadTree(options.model, task.num_classes, options.split_stages, options.fanouts,
                             options.model_options, options.rescale_gradient)
        self.register_buffer("distill_scale", torch.tensor(sigmoid_rampup(0, options.rampup_epochs)))

    def on_epoch_start(self, epoch, epochs):
        self.distill_scale.fill_(sigmoid_rampup(epoch, self.options.rampup_epochs))

    def forward(self, batch) -> StepOutput:
        opts = self.options
        logits = self.tree(batch.view(0))
        count = len(logits)
        stacked = torch.stack([z.float() for z in logits])  # (H, B, C)
        total = stacked.sum(0)
        ce = torch.stack([hard_ce(z, batch) for z in logits])
        kls = []
        for h, z in enumerate(logits):
            consensus = (total - stacked[h]) / (count - 1)
            kls.append(kd_kl(z, consensus.detach() if opts.detach_target else consensus, opts.temperature))
        kl = torch.stack(kls)
        if opts.loss_form == "okddip":
            loss = ce.sum() + self.distill_scale * opts.kl_weight * kl.sum()
        else:
            loss = opts.hard_weight * ce.sum() + (1 - opts.hard_weight) * self.distill_scale * kl.sum()
        return StepOutput(loss, {"ce": ce.sum().detach(), "kl": kl.sum().detach(),
                                 "distill_scale": self.distill_scale.detach().clone()})

    def predict(self, x):
        logits = self.tree(x)
        preds = {f"head{h}": z for h, z in enumerate(logits)}
        preds["ensemble"] = mean_probs_logits(logits)
        return preds

    def diversity_groups(self):
        return {"heads": [f"head{h}" for h in range(self.tree.heads)]}

    def export(self, key=None):
        key = key or "head0"
        valid = [f"head{h}" for h in range(self.tree.heads)]
        if key not in valid:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(valid)}")
        return self.tree.export_head(int(key[len("head"):]))
