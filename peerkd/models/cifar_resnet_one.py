"""The bottleneck CIFAR ResNets of the ONE / OKDDip code lineage, each named after the code it equals.

``resnet110_okddip``: the "ResNet-110" of OKDDip's code (DefangChen/OKDDip-AAAI2020 ``models/model_cifar/resnet.py``,
``resnet_one.py`` and ``resnet_GL.py``: ``ResNet(Bottleneck, [12, 12, 12])``) and of DLB's (Meta-knowledge-Lab/DLB
``models/resnet.py``, the same file): the ResNet-110 of MDE (paper 001), CSS (paper 000: its recipe and baselines are
ONE's / OKDDip's; its baseline 76.21 sits next to MDE's 76.15 for this network) and CutnMix (paper 003: its authors'
DLB code; its baseline 76.28). 1,170,868 parameters at 100 classes (held against OKDDip's code in
``tests/golden/test_okddip.py``). ``resnet110_one`` is the same network under its earlier name, kept as a registered
alias so existing configs and run folders keep building it; it is *not* the ResNet-110 of ONE's own code.

``resnet110_lan``: the ResNet-110 of ONE's own code (Lan1991Xu/ONE_NeurIPS2018 ``models/cifar/resnet.py``:
``n = (depth - 2) // 6 = 18`` bottleneck blocks a stage, the same block and widths): 1,727,284 parameters at 100
classes (4,363,653 as ONE's 3-branch network). No table among peerkd's configs quotes ONE's own ResNet-110 numbers
(the ONE rows of MDE, CSS and CutnMix were run with OKDDip's code); it is here so ONE's own setting can be run.

Unlike He et al.'s ResNet-110 (18 basic blocks per stage, 16-32-64 channels; ``resnet110``), this network uses
bottleneck blocks (1x1, 3x3, 1x1, expansion 4) for depths of 44 and more: depth 9n + 2, three stages of n bottlenecks
with 16, 32 and 64 inner channels and 64, 128 and 256 output channels, a 3x3 stem with 16 channels, 1x1-conv + BN
shortcuts where the shape changes (including the first block, 16 -> 64), global pooling and a linear classifier.
Registered as ``resnet110_okddip`` (n = 12; alias ``resnet110_one``), ``resnet56_okddip`` (n = 6; alias
``resnet56_one``) and ``resnet110_lan`` (n = 18).

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
    """``depth`` 9n + 2 (n bottlenecks a stage: OKDDip's count of the depth); ``blocks`` gives n directly (ONE's own
    code counts the depth as 6n + 2 for bottlenecks too: its ResNet-110 has n = 18)."""

    def __init__(self, depth: int, num_classes: int, planes=(16, 32, 64), inner_width: int = 1,
                 blocks: int | None = None):
        super().__init__()
        if blocks is None and (depth - 2) % 9:
            raise ValueError(f"bottleneck CIFAR ResNet depth must be 9n+2, got {depth}")
        n = blocks if blocks is not None else (depth - 2) // 9
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages, in_ch = [], 16
        for i, width in enumerate(planes):
            layers = []
            for b in range(n):
                layers.append(Bottleneck(in_ch, width, stride=2 if (i > 0 and b == 0) else 1, inner_width=inner_width))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [p * Bottleneck.expansion for p in planes]
        self.head = ClassifierHead(self.stage_channels[-1], num_classes)
        init_weights(self)


def resnet110_okddip(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(110, num_classes, **kwargs)  # 9n + 2 = 110: n = 12


def resnet56_okddip(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(56, num_classes, **kwargs)  # 9n + 2 = 56: n = 6


register_model("resnet110_okddip", "CIFAR ResNet-110 of OKDDip's / DLB's code: bottleneck blocks, 12 per stage, "
               "64-128-256")(resnet110_okddip)
register_model("resnet110_one", "alias of resnet110_okddip (its earlier name; not ONE's own ResNet-110, which is "
               "resnet110_lan)")(resnet110_okddip)
register_model("resnet56_okddip", "CIFAR ResNet-56 of OKDDip's code lineage: bottleneck blocks, 6 per stage, "
               "64-128-256")(resnet56_okddip)
register_model("resnet56_one", "alias of resnet56_okddip (its earlier name)")(resnet56_okddip)


@register_model("resnet110_lan", "CIFAR ResNet-110 of ONE's own code (Lan1991Xu/ONE_NeurIPS2018): bottleneck blocks, "
                "18 per stage, 64-128-256")
def resnet110_lan(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(110, num_classes, blocks=(110 - 2) // 6, **kwargs)  # ONE's n = (depth - 2) // 6


@register_model("wide_resnet20_8", "CIFAR WRN-20-8 of the OKDDip/DLB code: 2 bottlenecks per stage, 8x wider inside")
def wide_resnet20_8(num_classes: int, **kwargs) -> CifarBottleneckResNet:
    return CifarBottleneckResNet(20, num_classes, inner_width=8, **kwargs)  # inner width x8: width_per_group 64 * 8
