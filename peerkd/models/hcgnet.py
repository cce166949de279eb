"""HCGNet: Yang, An, Zhu, Xu, Xu, "Gated Convolutional Networks with Hybrid Connectivity for Image Classification",
AAAI 2020; the CIFAR HCGNet-A1 / A2 that MCL's tables run (winycg/MCL ``models/hcgnet.py``, from winycg/HCGNet),
written from the paper and that file's reading.

Three hybrid blocks of gated units (the paper's SMG modules). A unit reads the concatenation of everything before it
in its block (dense connectivity) and appends its output of ``g`` channels (the block's growth rate):

    x    = conv3x3_g4(BN-ReLU(conv1x1(BN-ReLU(input))))          (bottleneck 4g, then a 4-group 3x3 conv to g)
    out  = x * forget(x) + update(x)

- forget gate: s = sum_hw x * softmax_hw(conv1x1(x)) (attention pooling); forget = sigmoid(fc2(tanh(BN1d(fc1(s)))))
  with fc1: g -> g / f, fc2: g / f -> g (1x1 convolutions with bias, f = 2);
- update gate: two depthwise BN-ReLU-conv branches on x, 3x3 and 3x3 dilated 2 (a 5x5 field), each attention-pooled
  as above to p3, p5; z = tanh(BN1d(fc(p3 ; p5))) (2g -> 2g / r, r = 2); the two scales' weights are a softmax over
  (fc3(z), fc5(z)) per channel; update = w3 p3 + w5 p5 (one value per channel, broadcast over the map).

Between blocks a transition halves the channels (theta = 0.5) and the resolution: BN-ReLU-1x1 to C - (C - C')/2,
BN-ReLU-3x3 stride 2 to C', then the same two gates (f = r = 4) with no concatenation. After the last block BN and
ReLU; the head pools and classifies. The stem is one 3x3 convolution to twice the first growth rate.

Stages (peerkd's contract): block 1 + transition 1, block 2 + transition 2, block 3 + BN-ReLU. MCL's x4 networks
share the stem and the first stage (``HCGNet_b``): ``shared_stages: 1``. Held against MCL's file by
``tests/golden/test_mcl.py`` (parameter count, logits in both modes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


def preact_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
                dilation: int = 1) -> nn.Sequential:
    """BN, ReLU, convolution without bias."""
    return nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
                         nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups,
                                   bias=False))


def attention_pool(x: torch.Tensor, score: nn.Module) -> torch.Tensor:
    """``sum_hw x * softmax_hw(score(x))``: ``(B, C, 1, 1)``."""
    b, _, h, w = x.shape
    weights = F.softmax(score(x).reshape(b, h * w), dim=1).reshape(b, 1, h, w)
    return (x * weights).sum(dim=(2, 3), keepdim=True)


class Gates(nn.Module):
    """The update gate (two depthwise scales mixed by a per-channel softmax) and the forget gate of a gated unit,
    over ``channels``; ``reduction`` and ``forget_reduction`` divide the hidden widths (the module docstring)."""

    def __init__(self, channels: int, reduction: int, forget_reduction: int):
        super().__init__()
        c, hidden = channels, 2 * channels // reduction
        self.scale3 = preact_conv(c, c, 3, padding=1, groups=c)
        self.scale5 = preact_conv(c, c, 3, padding=2, groups=c, dilation=2)
        self.score3 = nn.Conv2d(c, 1, 1)
        self.score5 = nn.Conv2d(c, 1, 1)
        self.mix = nn.Conv2d(2 * c, hidden, 1)
        self.mix_bn = nn.BatchNorm1d(hidden)
        self.weight3 = nn.Conv2d(hidden, c, 1)
        self.weight5 = nn.Conv2d(hidden, c, 1)
        self.forget_score = nn.Conv2d(c, 1, 1)
        self.forget_bn = nn.BatchNorm1d(c // forget_reduction)
        self.forget_down = nn.Conv2d(c, c // forget_reduction, 1)
        self.forget_up = nn.Conv2d(c // forget_reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        pooled = attention_pool(x, self.forget_score)
        squeezed = torch.tanh(self.forget_bn(self.forget_down(pooled).flatten(1)))
        forget = torch.sigmoid(self.forget_up(squeezed.reshape(b, -1, 1, 1)))
        p3 = attention_pool(self.scale3(x), self.score3)
        p5 = attention_pool(self.scale5(x), self.score5)
        z = torch.tanh(self.mix_bn(self.mix(torch.cat([p3, p5], 1)).flatten(1))).reshape(b, -1, 1, 1)
        weights = F.softmax(torch.stack([self.weight3(z), self.weight5(z)]), dim=0)  # per channel over the scales
        return x * forget + weights[0] * p3 + weights[1] * p5


class GatedUnit(nn.Module):
    """A hybrid block's unit (SMG): bottleneck 1x1 to 4g, 4-group 3x3 to g, the gates; appended to its input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int = 4):
        super().__init__()
        self.reduce = preact_conv(in_ch, bottleneck * growth, 1)
        self.conv = preact_conv(bottleneck * growth, growth, 3, padding=1, groups=4)
        self.gates = Gates(growth, reduction=2, forget_reduction=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.gates(self.conv(self.reduce(x)))], 1)


class GatedTransition(nn.Module):
    """Between blocks: 1x1 to ``in_ch - (in_ch - out_ch) // 2``, 3x3 stride 2 to ``out_ch``, the gates (r = f = 4)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = in_ch - (in_ch - out_ch) // 2
        self.reduce = preact_conv(in_ch, mid, 1)
        self.conv = preact_conv(mid, out_ch, 3, stride=2, padding=1)
        self.gates = Gates(out_ch, reduction=4, forget_reduction=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gates(self.conv(self.reduce(x)))


def hybrid_stage(channels: int, growth: int, units: int, theta: float | None) -> tuple[nn.Sequential, int]:
    """A hybrid block of ``units`` gated units and its exit: a transition to ``int(C * theta)`` channels at half the
    resolution, or (``theta`` None, the last block) BN and ReLU. Returns the stage and its output channels."""
    layers = []
    for _ in range(units):
        layers.append(GatedUnit(channels, growth))
        channels += growth
    if theta is None:
        return nn.Sequential(*layers, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)), channels
    return nn.Sequential(*layers, GatedTransition(channels, int(channels * theta))), int(channels * theta)


class HCGNet(Backbone):
    def __init__(self, num_classes: int, growth=(12, 24, 36), units=(8, 8, 8), theta: float = 0.5):
        super().__init__()
        channels = 2 * growth[0]
        self.stem = nn.Conv2d(3, channels, 3, 1, 1, bias=False)
        stages, self.stage_channels = [], []
        for i, (g, n) in enumerate(zip(growth, units)):
            stage, channels = hybrid_stage(channels, g, n, theta if i < len(growth) - 1 else None)
            stages.append(stage)
            self.stage_channels.append(channels)
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)


@register_model("hcgnet_a1", "CIFAR HCGNet-A1 (Yang et al. 2020; MCL's models/hcgnet.py): growth 12-24-36, 8 units")
def hcgnet_a1(num_classes: int) -> HCGNet:
    return HCGNet(num_classes, growth=(12, 24, 36))


@register_model("hcgnet_a2", "CIFAR HCGNet-A2 (Yang et al. 2020; MCL's models/hcgnet.py): growth 24-36-64, 8 units")
def hcgnet_a2(num_classes: int) -> HCGNet:
    return HCGNet(num_classes, growth=(24, 36, 64))
