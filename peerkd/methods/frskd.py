"""FRSKD: feature refinement via self-knowledge distillation. Ji, Shin, Hwang, Park, Moon, "Refine Myself by Teaching
Myself: Feature Refinement via Self-Knowledge Distillation", CVPR 2021 — as winycg/Self-KD-Lib runs it
(``methods/frskd.py``, ``models/bifpnc.py``, ``main.py``).

One classifier network and a self-teacher: a BiFPN over the classifier's stage maps F_1..F_S (top-down, then
bottom-up, with learned normalised fusion weights) gives refined maps T_1..T_S and, from the last one, its own logits
t. With the classifier's logits z and temperature T:

    L = CE(z, y) + CE(t, y) + kd_weight * T^2 * KL(softmax(t / T) || softmax(z / T))
        + attention_weight * sum_s mean_{b, p} (a(F_s)_{b,p} - a(sg(T_s))_{b,p})^2,
    a(F) = normalize_L2(mean_c F^2 flattened over the positions p)          (attention transfer, p = 2)

with T = 4, kd_weight = 2, attention_weight = 100 (Self-KD-Lib ``methods/frskd.py``: ``2 * criterion_div(logit,
bi_logits)``, ``100 * AT(features, bi_feats)``; ``main.py`` ``--T 4``, ``DistillKL`` in ``utils.py``). sg: the
refined maps are detached in the attention term (``at_loss(f_s, f_t.detach())``).

The self-teacher (``SelfTeacherBiFPN``; Self-KD-Lib ``BiFPNc`` with ``repeat=1, depth=[2, 2, 2], width=2`` for the
CIFAR ResNet-18, ``CIFAR_ResNet18_BiFPN``), per level s of S stages, C_s the classifier's channels, w the width:

- inputs: ``P_s = lateral_s(relu(F_s))`` (1x1 conv -> BN -> ReLU to w C_s) and, for s >= 1, a second lateral
  ``L_s = skip_s(relu(F_s))`` of the same form;
- top-down, s = S-2 .. 0: ``U_s = up_conv_s(v0 relu(P_s) + v1 up_s(relu(U_{s+1})))``, U_{S-1} = P_{S-1}, where
  ``up_s`` is nearest upsampling to level s's size then 1x1 conv -> BN -> ReLU, ``up_conv`` a separable block (3x3
  depthwise -> 1x1 -> BN, ``depth`` times, ReLU between) and (v0, v1) = relu(u) / (sum relu(u) + 1e-6) of a learned
  u initialised to ones;
- bottom-up, s = 1 .. S-1: ``D_s = down_conv_s(v0 relu(L_s) + v1 relu(U_s) + v2 down_s(relu(D_{s-1})))`` (the last
  level without the U term), D_0 = U_0, where ``down_s`` is a 3x3 max-pool with TensorFlow-style "same" zero padding
  then 1x1 conv -> BN -> ReLU;
- T_s = D_s as they are (``preact``: the code's ResNet-18 pairs pre-activation maps; the ResNet-50 pairs relu'd
  ones), t = fc(avgpool(relu(T_{S-1}))).

Readings, each from Self-KD-Lib:

- The KL term is not detached from the self-teacher: ``criterion_div(logit, bi_logits)`` back-propagates into the
  BiFPN and, through it, into the classifier's stages (``teacher_gradient: both``, the default). The attention term
  detaches the refined maps. ``teacher_gradient: student`` detaches t (a deviation from the code, for comparison).
- Both cross-entropies are unweighted; the KL has weight 2 and the attention term 100, added as ``loss_cls +
  loss_div``.
- Where consecutive stages do not halve the resolution (a model of the stem / stages / head contract other than the
  CIFAR ResNets), the upsampling goes to the finer level's size and the max-pool's stride is the ratio of the sizes
  (1 for equal sizes): the code's factor-2 resampling wherever the sizes halve, which is every level of its models.
- With ``repeat > 1``, later layers take the previous layer's w C_s maps and return relu'd maps (the code's
  ``BiFPNc``; it builds their second lateral for C_s inputs, which only runs at width 1: here it takes w C_s).
- ``predict``: ``net`` is the classifier (what the README scores), ``teacher`` the self-teacher's logits.

Held against Self-KD-Lib's code (``tests/golden/test_selfkdlib_frskd.py``, one step of a batch of 4 on its
``CIFAR_ResNet18_BiFPN``, the self-teacher paired with ``SelfTeacherBiFPN`` in state_dict order, shapes checked):
both networks' logits and each term (two CEs, KL, attention) exact, the total 8e-8, every parameter's gradient of
both networks 4e-6 of its norm; and the self-teacher alone against ``BiFPNc`` over 3 levels with 2 layers, depth 1,
width 1, preact on and off (refined maps, logits, gradients into the stage maps and the parameters) to 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl
from peerkd.methods.parts.cohort import build_cohort, export_member

FUSION_EPSILON = 1e-6  # added to the sum of the relu'd fusion weights before dividing (the code's epsilon)


def pointwise_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (no bias) -> BN -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


def separable_block(channels: int, depth: int) -> nn.Sequential:
    """``depth`` times 3x3 depthwise conv -> 1x1 conv -> BN (no bias), a ReLU before every repetition after the
    first; no activation at the end."""
    units = []
    for i in range(depth):
        unit = [nn.ReLU()] if i else []
        unit += [nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                 nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)]
        units.append(nn.Sequential(*unit))
    return nn.Sequential(*units)


def same_max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 max-pool with TensorFlow's "same" padding (zeros, the extra one at the bottom / right): ceil(size /
    stride) outputs."""
    h, w = x.shape[-2:]
    extra_w = (math.ceil(w / stride) - 1) * stride - w + 3
    extra_h = (math.ceil(h / stride) - 1) * stride - h + 3
    x = F.pad(x, [extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2])
    return F.max_pool2d(x, 3, stride)


def fuse(weights: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i v_i x_i`` with ``v = relu(weights) / (sum relu(weights) + eps)``."""
    v = F.relu(weights)
    v = v / (v.sum(dim=0) + FUSION_EPSILON)
    out = v[0] * inputs[0]
    for i in range(1, len(inputs)):
        out = out + v[i] * inputs[i]
    return out


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass over S levels (the module names follow the order the code registers them)."""

    def __init__(self, channels: list[int], width: int, depth: tuple[int, int, int], first: bool):
        super().__init__()
        levels, wide = len(channels), [c * width for c in channels]
        inputs = channels if first else wide
        _, up_depth, down_depth = depth  # the lateral depth does not act on a 1x1 block (the code's DepthConvBlock)
        self.first = first
        self.lateral = nn.ModuleList([pointwise_block(i, o) for i, o in zip(inputs, wide)]) if first \
            else nn.ModuleList()
        self.skip = nn.ModuleList([pointwise_block(inputs[s], wide[s]) for s in range(1, levels)])
        self.up_conv = nn.ModuleList([separable_block(wide[s], up_depth) for s in range(levels - 1)])
        self.up_weight = nn.ParameterList([nn.Parameter(torch.ones(2)) for _ in range(levels - 1)])
        self.down_conv = nn.ModuleList([separable_block(wide[s], down_depth) for s in range(1, levels)])
        self.down_weight = nn.ParameterList([nn.Parameter(torch.ones(3 if s < levels - 1 else 2))
                                             for s in range(1, levels)])
        self.down_resample = nn.ModuleList([pointwise_block(wide[s - 1], wide[s]) for s in range(1, levels)])
        self.up_resample = nn.ModuleList([pointwise_block(wide[s + 1], wide[s]) for s in range(levels - 1)])

    def forward(self, maps: list[torch.Tensor], preact: bool) -> list[torch.Tensor]:
        levels = len(maps)
        skips = [self.skip[s - 1](F.relu(maps[s])) for s in range(1, levels)]
        if self.first:
            maps = [lateral(F.relu(m)) for lateral, m in zip(self.lateral, maps)]
        top_down = [None] * levels
        top_down[-1] = maps[-1]
        for s in range(levels - 2, -1, -1):
            coarser = F.interpolate(F.relu(top_down[s + 1]), size=maps[s].shape[-2:], mode="nearest")
            top_down[s] = self.up_conv[s](fuse(self.up_weight[s], [F.relu(maps[s]),
                                                                    self.up_resample[s](coarser)]))
        out = [top_down[0]]
        for s in range(1, levels):
            stride = max(1, -(-out[-1].shape[-2] // maps[s].shape[-2]))
            finer = self.down_resample[s - 1](same_max_pool(F.relu(out[-1]), stride))
            parts = [F.relu(skips[s - 1])] + ([F.relu(top_down[s])] if s < levels - 1 else []) + [finer]
            out.append(self.down_conv[s - 1](fuse(self.down_weight[s - 1], parts)))
        return out if preact else [F.relu(m) for m in out]


class SelfTeacherBiFPN(nn.Module):
    """FRSKD's self-teacher: ``repeat`` BiFPN layers over the classifier's stage maps and a linear classifier on the
    relu'd, pooled last refined map."""

    def __init__(self, channels: list[int], num_classes: int, width: int, depth: tuple[int, int, int], repeat: int):
        super().__init__()
        self.layers = nn.ModuleList([BiFPNLayer(channels, width, depth, first=i == 0) for i in range(repeat)])
        self.fc = nn.Linear(channels[-1] * width, num_classes)

    def forward(self, maps: list[torch.Tensor], preact: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        for i, layer in enumerate(self.layers):
            maps = layer(maps, preact and i == len(self.layers) - 1)
        pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(maps[-1]), 1), 1)
        return maps, self.fc(pooled)


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """Attention transfer's map (p = 2): the channel mean of x^2, flattened, L2-normalised per sample."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """``sum_s mean (a(F_s) - a(sg(T_s)))^2`` over the paired maps."""
    return sum((attention_map(f) - attention_map(t.detach())).pow(2).mean() for f, t in zip(student, teacher))


@register_method("frskd")
class FRSKD(Method):
    """Feature refinement via self-KD (Ji et al. 2021): a BiFPN self-teacher over the stages teaches logits and
    attention maps."""

    @dataclass
    class Options:
        model: str = "preact_resnet18"  # the classifier network (Self-KD-Lib's CIFAR_ResNet18), stem/stages/head
        model_options: dict = field(default_factory=dict)  # keyword arguments for its factory
        temperature: float = 4.0  # T of the KL term: Self-KD-Lib main.py --T
        kd_weight: float = 2.0  # weight of T^2 KL(teacher || classifier): methods/frskd.py's 2 * criterion_div
        attention_weight: float = 100.0  # weight of the attention term: methods/frskd.py's 100 * AT(...)
        width: int = 2  # BiFPN channels per level = width x the stage's channels (CIFAR_ResNet18_BiFPN: 2)
        depth: list[int] = field(default_factory=lambda: [2, 2, 2])  # lateral / top-down / bottom-up separable
        # block depths (CIFAR_ResNet18_BiFPN: [2] * 3; the lateral one does not act on 1x1 blocks)
        repeat: int = 1  # BiFPN layers (CIFAR_ResNet18_BiFPN: 1)
        preact: bool = True  # the refined maps paired as they are (ResNet-18 in the code) or relu'd (its ResNet-50)
        teacher_gradient: Literal["both", "student"] = "both"  # both: the KL also trains the self-teacher (the
        # code does not detach bi_logits); student: t detached in the KL

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}

    def __init__(self, options, task):
        super().__init__(options, task)
        if options.width < 1 or options.repeat < 1 or len(options.depth) != 3 or min(options.depth) < 1:
            raise ConfigError(f"method: FRSKD needs width >= 1, repeat >= 1 and three depths >= 1 (lateral, "
                              f"top-down, bottom-up), not width={options.width}, repeat={options.repeat}, "
                              f"depth={options.depth}")
        self.models = build_cohort([options.model], task.num_classes, options.model_options)
        channels = list(self.models[0].stage_channels)
        if len(channels) < 2:
            raise ConfigError(f"method.model: FRSKD's BiFPN needs at least two stages; {options.model} has "
                              f"{len(channels)}")
        self.teacher = SelfTeacherBiFPN(channels, task.num_classes, options.width, tuple(options.depth),
                                        options.repeat)

    def forward(self, batch) -> StepOutput:
        model, opts = self.models[0], self.options
        maps = model.forward_stages(batch.view(0))
        logits = model.head(maps[-1])
        refined, teacher_logits = self.teacher(maps, opts.preact)
        ce = hard_ce(logits, batch)
        teacher_ce = hard_ce(teacher_logits, batch)
        target = teacher_logits if opts.teacher_gradient == "both" else teacher_logits.detach()
        kd = kd_kl(logits, target, opts.temperature)
        attention = attention_loss(maps, refined)
        loss = ce + teacher_ce + opts.kd_weight * kd + opts.attention_weight * attention
        return StepOutput(loss, {"ce": ce.detach(), "teacher_ce": teacher_ce.detach(), "kd": kd.detach(),
                                 "attention": attention.detach()})

    def predict(self, x):
        model = self.models[0]
        maps = model.forward_stages(x)
        return {"net": model.head(maps[-1]), "teacher": self.teacher(maps, self.options.preact)[1]}

    def export(self, key=None):
        if key in (None, "net"):
            return export_member(self.models, "peer0")
        raise KeyError(f"cannot export '{key}': FRSKD exports 'net' (the self-teacher needs the classifier's stages)")
