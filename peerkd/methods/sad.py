"""SAD: Hou, Ma, Liu, Loy, "Learning Lightweight Lane Detection CNNs by Self Attention Distillation", ICCV 2019, as
winycg/Self-KD-Lib runs it on CIFAR classification (``methods/sad.py``, ``main.py``; held against that code in
``tests/golden/test_selfkdlib_sad.py``).

One network; the attention map of each stage is taught by the attention map of the stage after it. With ``F_i`` the
output map of stage ``i`` (``i = 1 .. S``), ``up(.)`` the bilinear resizing of a map to stage ``i``'s resolution and
``A(F)`` the spatial attention map

    A(F)[b, h, w] = softmax_{h, w}( mean_c F[b, c, h, w]^p )        (p = 2; the softmax over all positions)

the loss is

    L = CE(z, y) + beta * sum_{i=1..S-1} mean_{b, h, w} ( A(F_i) - A(up(sg(F_{i+1}))) )^2,    beta = 1000

Readings, with their evidence (Self-KD-Lib at ede3062d1193626da2bc8a1ceba535d84fb0a08c):

- ``methods/sad.py`` ``Attention``: ``at(f) = softmax(f.pow(p).mean(1).view(B, -1), dim=1).view(B, H, W)`` with
  ``p = 2``; ``at_loss(f_s, f_t) = (at(f_s) - at(f_t)).pow(2).mean()``; the loss ``sum(at_loss(f[i],
  interpolate(f[i+1].detach(), scale_factor=2., mode="bilinear")) for i in range(len(f) - 1))``: the *later*
  stage's feature map (detached: it teaches, it is not taught) is upsampled before its attention is computed (the
  map is resized, not the attention), bilinear with PyTorch's default ``align_corners=False``; every successive
  pair of stages, the first stage included. ``SAD``: ``loss_div += 1000 * AT(features)`` and ``loss_cls +=
  criterion_cls(logit, targets)`` (``nn.CrossEntropyLoss``); ``main.py``: ``loss = loss_cls + loss_div``, the
  features the network's ``[out1, out2, out3, out4]`` (``models/resnet.py``: each ``layer``'s raw output, before
  pooling; peerkd's ``forward_stages``).
- Resizing: the code's ``scale_factor=2`` assumes every stage halves the resolution (true of its ResNets); here the
  later map is resized to the earlier map's size, which is the same interpolation where the ratio is 2 (PyTorch
  then samples at the same source coordinates) and keeps a stage that does not downsample (ratio 1: no resizing)
  or any other ratio valid.
- ``main.py`` ``test`` scores the network's logits: ``predict`` gives ``net``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce
from peerkd.models import build_model
from peerkd.methods.parts.cohort import export_single_network

ResizeMode = Literal["bilinear", "nearest"]  # how the later stage's map is brought to the earlier's size


def attention_map(feature: torch.Tensor, power: float) -> torch.Tensor:
    """``(B, H, W)``: the softmax over all positions of the channel mean of ``feature ** power``."""
    b, _, h, w = feature.shape
    return F.softmax(feature.float().pow(power).mean(1).reshape(b, -1), dim=1).reshape(b, h, w)


def attention_distillation(features: list[torch.Tensor], power: float = 2.0,
                           mode: ResizeMode = "bilinear") -> torch.Tensor:
    """SAD's term: ``sum_i mean (A(F_i) - A(resize(sg(F_{i+1}))))^2`` over successive maps ``features``."""
    total = features[0].new_zeros((), dtype=torch.float32)
    for earlier, later in zip(features[:-1], features[1:]):
        teacher = later.detach()
        if teacher.shape[-2:] != earlier.shape[-2:]:
            teacher = F.interpolate(teacher, size=earlier.shape[-2:], mode=mode,
                                    **({"align_corners": False} if mode == "bilinear" else {}))
        total = total + (attention_map(earlier, power) - attention_map(teacher, power)).pow(2).mean()
    return total


@register_method("sad")
class SAD(Method):
    """Self Attention Distillation (Hou et al. 2019): each stage's attention map learns the next stage's."""

    @dataclass
    class Options:
        model: str = "preact_resnet18"  # the network; Self-KD-Lib's CIFAR_ResNet18 is peerkd's preact_resnet18
        model_options: dict = field(default_factory=dict)  # keyword arguments of its factory
        weight: float = 1000.0  # beta: weight of the attention term (Self-KD-Lib methods/sad.py: 1000 * AT)
        power: float = 2.0  # p in mean_c F^p (Self-KD-Lib Attention.p = 2)
        resize: ResizeMode = "bilinear"  # resizing of the later map (Self-KD-Lib: F.interpolate bilinear)

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # the attention maps of every stage

    def __init__(self, options, task):
        super().__init__(options, task)
        self.model = build_model(options.model, task.num_classes, key="method.model", **options.model_options)

    def forward(self, batch) -> StepOutput:
        maps = self.model.forward_stages(batch.view(0))
        logits = self.model.head(maps[-1])
        ce = hard_ce(logits, batch)
        attention = attention_distillation(maps, self.options.power, self.options.resize)
        return StepOutput(ce + self.options.weight * attention, {"ce": ce.detach(), "attention": attention.detach()})

    def predict(self, x):
        return {"net": self.model(x)}

    def export(self, key=None):
        return export_single_network(self.model, key)
