"""The CIFAR "ResNet-110" of the ONE / OKDDip code lineage: the ResNet-110 of MDE (paper 001), CSS (paper 000: its
recipe and baselines are ONE's / OKDDip's; its baseline 76.21 sits next to MDE's 76.15 for this network) and CutnMix
(paper 003: its authors' DLB code, Meta-knowledge-Lab/DLB ``models/resnet.py``, defines ``resnet110`` this way; its
baseline 76.28).

Unlike He et al.'s ResNet-110 (18 basic blocks per stage, 16-32-64 channels; ``resnet110``), this network uses
bottleneck blocks (1x1, 3x3, 1x1, expansion 4) for depths of 44 and more: depth 9n + 2, three stages of n bottlenecks
with 16, 32 and 64 inner channels and 64, 128 and 256 output channels, a 3x3 stem with 16 channels, 1x1-conv + BN
shortcuts where the shape changes (including the first block, 16 -> 64), global pooling and a linear classifier.
Registered as ``resnet110_one`` (n = 12) and ``resnet56_one`` (n = 6).

The same code defines its "WRN-20-8" as this network with n = 2 and bottlenecks eight times wider inside (16, 32, 64
planes x 8 = 128, 256, 512 inner channels, the outputs still 64, 128, 256): ``wide_resnet20_8`` of OKDDip's
DefangChen/OKDDip ``models/model_cifar/resnet.py`` (torchvision's ``width_per_group = 64 * 8``), 6.87 M parameters at
100 classes. CSS (paper 000, recipe and baselines from ONE / OKDDip) and CutnMix (paper 003, whose authors' DLB code,
Meta-knowledge-Lab/DLB ``models/resnet.py``, carries the same file with paper 003's six networks) mean this network;
registered as ``wide_resnet20_8``. (He et al.'s / Zagoruyko's WRN with 3 blocks per stage is ``wrn20_8``, 17.2 M.)
"""
from __future__ import annotations

from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet4 import Bottleneck4
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


class Bottleneck(Bottleneck4):
    """1x1 -> 3x3 -> 1x1 bottleneck with expansion 4 and ``planes * inner_width`` channels inside (ungrouped)."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1, inner_width: int = 1):
        super().__init__(in_ch, planes, stride, groups=1, base_width=64 * inner_width)


class CifarBottleneckResNet(Backbone):
    def __init__(self, depth: int, num_classes: int, planes=(16, 32, 64), inner_width: int = 1):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"bottleneck CIFAR ResNet depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages, in_ch = [], 16
        for i, width in enumerate(planes):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (i > 0 and b == 0) else 1, inner_width=inner_width))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [p * Bottleneck.expansion for p in planes]
        self.head = ClassifierHead(self.stage_channels[-1], num_classes)
        init_weights(self)


@register_model("resnet110_one", "CIFAR ResNet-110 of the ONE/OKDDip code: bottleneck blocks, 12 per stage, 64-128-256")
def resnet110_one(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(110, num_classes, **kwargs)


@register_model("resnet56_one", "CIFAR ResNet-56 of the ONE/OKDDip code: bottleneck blocks, 6 per stage, 64-128-256")
def resnet56_one(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(56, num_classes, **kwargs)


@register_model("wide_resnet20_8", "CIFAR WRN-20-8 of the ONE/OKDDip code: 2 bottlenecks per stage, 8x wider inside")
def wide_resnet20_8(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(20, num_classes, inner_width=8, **kwargs)  # inner width x8: width_per_group 64 * 8
