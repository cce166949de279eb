"""Four-stage ResNets and ResNeXts adapted to 32x32 images: ResNet-18/34/50 (He et al., CVPR 2016) and
ResNeXt-50 (32x4d) (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017).

The usual CIFAR adaptation of the ImageNet networks (as in the PS-KD and BYOT CIFAR code bases and most CIFAR
benchmarks): the 7x7 stride-2 stem and its max-pool become one 3x3 stride-1 convolution with 64 channels (BN, ReLU);
then four stages with 64, 128, 256, 512 planes (x4 channels for bottleneck blocks), the first block of stages 2-4
halving the resolution (32 -> 32, 16, 8, 4), global pooling and a linear classifier. Shortcuts that change shape are
1x1 convolutions with BatchNorm. Bottleneck blocks put the stride on the 3x3 convolution (the "ResNet v1.5" /
torchvision placement); ResNeXt's 3x3 convolution is grouped (32 groups of width 4 at 64 planes, doubling per stage).

Options of every factory: ``width`` (planes of the first stage, 64 in the papers; smaller values give tiny models
for tests) and ``num_stages`` (keep only the first 1..4 stages, the classifier after the last one kept: the
"number of backbone blocks" ablation of Chottananurak et al., Table 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock4(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("basic blocks support neither groups nor a base width (use a bottleneck network)")
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck4(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carries the stride), 1x1 expand x4 (ResNet-50, ResNeXt-50)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        inner = int(planes * (base_width / 64.0)) * groups  # ResNeXt's inner width: groups x per-group width
        if inner == 0:
            raise ValueError(f"bottleneck with {planes} planes, width_per_group {base_width}: no inner channels")
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet4(Backbone):
    """3x3 stem, four stages of ``blocks[i]`` blocks with ``width * 2**i`` planes, pooling, linear classifier."""

    def __init__(self, block: type, blocks: list[int], num_classes: int, width: int = 64, groups: int = 1,
                 width_per_group: int = 64, num_stages: int = 4):
        super().__init__()
        if not 1 <= num_stages <= len(blocks):
            raise ValueError(f"num_stages must be in 1..{len(blocks)}, got {num_stages}")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, channels, in_ch = [], [], width
        for i, count in enumerate(blocks[:num_stages]):
            planes = width * 2 ** i
            layers = []
            for b in range(count):
                layers.append(block(in_ch, planes, stride=2 if (i > 0 and b == 0) else 1, groups=groups,
                                    base_width=width_per_group))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*layers))
            channels.append(in_ch)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = channels
        self.head = ClassifierHead(in_ch, num_classes)
        init_weights(self)


@register_model("resnet18", "ResNet-18 for 32x32 images (3x3 stem, 4 stages of basic blocks, 64-512 planes)")
def resnet18(num_classes: int, width: int = 64, num_stages: int = 4) -> CifarResNet4:
    return CifarResNet4(BasicBlock4, [2, 2, 2, 2], num_classes, width=width, num_stages=num_stages)


@register_model("resnet34", "ResNet-34 for 32x32 images (3x3 stem, 4 stages of basic blocks, 64-512 planes)")
def resnet34(num_classes: int, width: int = 64, num_stages: int = 4) -> CifarResNet4:
    return CifarResNet4(BasicBlock4, [3, 4, 6, 3], num_classes, width=width, num_stages=num_stages)


@register_model("resnet50", "ResNet-50 for 32x32 images (3x3 stem, 4 stages of bottlenecks, 256-2048 channels)")
def resnet50(num_classes: int, width: int = 64, num_stages: int = 4) -> CifarResNet4:
    return CifarResNet4(Bottleneck4, [3, 4, 6, 3], num_classes, width=width, num_stages=num_stages)


@register_model("resnext50_32x4d", "ResNeXt-50 (32x4d) for 32x32 images (3x3 stem, 4 stages of grouped bottlenecks)")
def resnext50_32x4d(num_classes: int, width: int = 64, num_stages: int = 4, groups: int = 32,
                    width_per_group: int = 4) -> CifarResNet4:
    return CifarResNet4(Bottleneck4, [3, 4, 6, 3], num_classes, width=width, groups=groups,
                        width_per_group=width_per_group, num_stages=num_stages)
