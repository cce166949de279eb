"""CIFAR ResNeXt of Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017, sec. 5.3.

ResNeXt-29 (C x d): a 3x3 conv stem with 64 channels, three stages of 3 bottleneck blocks (9 blocks x 3 layers + stem +
classifier = 29), each block 1x1 conv -> grouped 3x3 conv (C groups, C*d channels in stage 1, doubled at every stage)
-> 1x1 conv to 256 / 512 / 1024 output channels, BN after every conv and a 1x1 conv + BN projection shortcut where the
shape changes. Stages 2 and 3 halve the resolution in their first block's 3x3 conv. ``resnext29_2x64d`` is the CSS
Table 1 network (C = 2, d = 64); ``resnext29_8x64d`` and ``resnext29_16x64d`` are Xie et al.'s CIFAR models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet import init_weights
from peerkd.models.registry import register_model


class ResNeXtBottleneck(nn.Module):
    def __init__(self, in_ch: int, group_width: int, out_ch: int, cardinality: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.conv2 = nn.Conv2d(group_width, group_width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.conv3 = nn.Conv2d(group_width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(Backbone):
    def __init__(self, cardinality: int, bottleneck_width: int, num_classes: int, blocks_per_stage: int = 3):
        super().__init__()
        stem_width, out_widths = 64, [256, 512, 1024]
        self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
                                  nn.ReLU(inplace=True))
        stages, in_ch = [], stem_width
        for i, out_ch in enumerate(out_widths):
            group_width = cardinality * bottleneck_width * 2 ** i
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(ResNeXtBottleneck(in_ch, group_width, out_ch, cardinality,
                                                stride=2 if (i > 0 and b == 0) else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = out_widths
        self.head = ClassifierHead(out_widths[-1], num_classes)
        init_weights(self)


def _register(cardinality: int, width: int):
    @register_model(f"resnext29_{cardinality}x{width}d",
                    f"CIFAR ResNeXt-29 ({cardinality}x{width}d, Xie et al. 2017), stages 256-512-1024")
    def factory(num_classes: int) -> CifarResNeXt:
        return CifarResNeXt(cardinality, width, num_classes)
    return factory


for _c, _w in [(2, 64), (8, 64), (16, 64)]:
    _register(_c, _w)
