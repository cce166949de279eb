"""CIFAR PyramidNet of Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017 (additive, basic blocks).

Depth 6n + 2 with n basic pyramidal blocks per stage. The width grows by alpha / (3n) channels at every block, from 16
after the stem to 16 + alpha after the last block (the k-th block of the 3n has round(16 + k * alpha / (3n)) output
channels). A block is BN -> 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN (no ReLU after the addition); its shortcut is
the identity, average pooling (2x2) where the block halves the resolution, and zero-padding of the new channels.
Stages 2 and 3 halve the resolution in their first block. A final BN-ReLU (part of the last stage here, so that
``forward_stages`` returns an activated map) precedes pooling. ``pyramidnet110_a84`` is the CSS Table 1 network
(alpha = 84, 18 blocks per stage, 100 channels at the end); ``pyramidnet110_a48`` is Han et al.'s smaller one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model
from peerkd.models.wrn import FinalActivation


class PyramidBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.extra_channels = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.bn3(out)
        short = self.pool(x)
        if self.extra_channels:
            short = F.pad(short, (0, 0, 0, 0, 0, self.extra_channels))
        return out + short


class PyramidNet(Backbone):
    def __init__(self, depth: int, alpha: float, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"PyramidNet (basic blocks) depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        start = 16
        self.stem = nn.Sequential(nn.Conv2d(3, start, 3, 1, 1, bias=False), nn.BatchNorm2d(start))
        step = alpha / (3 * n)
        stages, in_ch, k = [], start, 0
        stage_channels = []
        for i in range(3):
            blocks = []
            for b in range(n):
                k += 1
                out_ch = int(round(start + k * step))
                blocks.append(PyramidBlock(in_ch, out_ch, 2 if (i > 0 and b == 0) else 1))
                in_ch = out_ch
            if i == 2:
                blocks.append(FinalActivation(in_ch))
            stages.append(nn.Sequential(*blocks))
            stage_channels.append(in_ch)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = stage_channels
        self.head = ClassifierHead(in_ch, num_classes)
        init_weights(self)


def _register(depth: int, alpha: int):
    @register_model(f"pyramidnet{depth}_a{alpha}", f"CIFAR PyramidNet-{depth} (alpha={alpha}, Han et al. 2017)")
    def factory(num_classes: int) -> PyramidNet:
        return PyramidNet(depth, alpha, num_classes)
    return factory


for _d, _a in [(110, 48), (110, 84), (8, 12)]:  # pyramidnet8_a12: a tiny one for tests and quick runs
    _register(_d, _a)
