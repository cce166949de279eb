"""CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2.

Depth 6n + 2: a 3x3 conv stem with 16 channels, three stages of n basic blocks with 16, 32 and 64 channels (the
first block of stages 2 and 3 halves the resolution), global pooling and a linear classifier. Shortcuts that
change shape are 1x1 convolutions with BatchNorm (option B), as in the online-KD papers' code (ONE, OKDDip, CSS);
``shortcut="A"`` gives He et al.'s parameter-free zero-padding shortcut instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        self.pad_channels = 0
        if stride != 1 or in_ch != out_ch:
            if shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
            else:
                self.shortcut = nn.AvgPool2d(1, stride) if stride != 1 else nn.Identity()  # subsample, then pad
                self.pad_channels = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = self.shortcut(x)
        if self.pad_channels:
            short = F.pad(short, (0, 0, 0, 0, self.pad_channels // 2, self.pad_channels - self.pad_channels // 2))
        return F.relu(out + short)


class CifarResNet(Backbone):
    """``block(in_ch, out_ch, stride)`` builds each block; the default is :class:`BasicBlock` with ``shortcut``."""

    def __init__(self, depth: int, num_classes: int, widths=(16, 32, 64), shortcut: str = "B", block=None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        block = block or (lambda in_ch, out_ch, stride: BasicBlock(in_ch, out_ch, stride, shortcut=shortcut))
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(block(in_ch, width, 2 if (i > 0 and b == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(widths)
        self.head = ClassifierHead(widths[-1], num_classes)
        init_weights(self)


def _register(depth: int):
    @register_model(f"resnet{depth}", f"CIFAR ResNet-{depth} (He et al. 2016, basic blocks, 16-32-64)")
    def factory(num_classes: int, shortcut: str = "B", **kwargs) -> CifarResNet:
        return CifarResNet(depth, num_classes, shortcut=shortcut, **kwargs)
    return factory


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(_depth)
