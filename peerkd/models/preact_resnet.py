"""The CIFAR PreAct ResNet-18 of the PS-KD and CS-KD code (pre-activation basic blocks, He et al., "Identity Mappings
in Deep Residual Networks", ECCV 2016, as those two code bases build it).

Written from reading lgcnsai/PS-KD-Pytorch ``models/preact_resnet.py`` (``CIFAR_ResNet18_preActBasic``, the network
of PS-KD's CIFAR-100 table, Kim et al. ICCV 2021 Table 1 "PreAct ResNet-18") and alinlab/cs-kd ``models/resnet.py``
(``CIFAR_ResNet18``, the CS-KD paper's CIFAR ResNet-18): the two files define the same network, line for line, so
``preact_resnet18`` is both (11,217,444 parameters at 100 classes, ``tests/models/test_param_counts.py``; the
reference's own state_dict names and shapes and its forward in ``tests/golden/test_pskd.py``).

Structure (what those files build, including two details that differ from the textbook pre-activation ResNet):

- stem: 3x3 conv (64, stride 1, no bias) -> BN -> ReLU;
- four stages of two blocks each, 64 / 128 / 256 / 512 channels, stride 1 / 2 / 2 / 2 in the first block of a stage;
  a block is ``a = ReLU(BN1(x)); out = conv3x3(ReLU(BN2(conv3x3(a, stride)))) + shortcut(a)``, where the shortcut is
  a 1x1 conv (stride, no bias, no BN) where the shape changes and the identity otherwise — the identity of the
  *activated* input ``a``, not of ``x`` (the reference's ``self.shortcut = nn.Sequential()`` is applied to ``out``);
- no BN-ReLU after the last block (the reference pools the raw sum); head: 4x4 average pooling (= global pooling at
  32 px, which is what ``ClassifierHead`` does) and a linear classifier with bias.

``resnet101_pskd`` (below) is the PS-KD code's other CIFAR ResNet, whose table calls it "PreAct ResNet-101"
though its blocks are post-activation bottlenecks.

Weights keep PyTorch's default initialisation (the references call no init function), so ``init_weights`` is not
applied. The reference's state_dict names map to these one to one (``tests/golden/test_pskd.py``: ``conv1`` /
``bn1`` -> ``stem.0`` / ``stem.1``, ``layer{s}.{b}`` -> ``stages.{s-1}.{b}``, ``linear`` -> ``head.fc``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet4 import Bottleneck4, CifarResNet4
from peerkd.models.registry import register_model


class PreActBlock(nn.Module):
    """BN -> ReLU -> (shortcut from here) conv3x3 -> BN -> ReLU -> conv3x3, plus the shortcut; no activation after."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        projects = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)) if projects \
            else nn.Sequential()  # identity of the activated input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + self.shortcut(activated)


class PreActResNet(Backbone):
    """CIFAR PreAct ResNet with ``blocks`` pre-activation basic blocks per stage (PS-KD / CS-KD code's layout)."""

    def __init__(self, blocks: list[int], num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths)):
            stage = []
            for b in range(count):
                stage.append(PreActBlock(in_ch, width, stride=2 if (i > 0 and b == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(widths[:len(blocks)])
        self.head = ClassifierHead(in_ch, num_classes)


@register_model("preact_resnet18", "CIFAR PreAct ResNet-18 of the PS-KD and CS-KD code (11.2 M at 100 classes)")
def preact_resnet18(num_classes: int, width: int = 64) -> PreActResNet:
    """``width``: channels of the first stage (64 in both references; doubled at every stage); smaller values only
    for tests."""
    return PreActResNet([2, 2, 2, 2], num_classes, tuple(width * 2 ** i for i in range(4)))


@register_model("resnet101_pskd", "CIFAR ResNet-101 of the PS-KD code (post-activation bottlenecks, 42.7 M)")
def resnet101_pskd(num_classes: int, width: int = 64) -> CifarResNet4:
    """The network PS-KD's CIFAR-100 table calls "PreAct ResNet-101": lgcnsai/PS-KD-Pytorch
    ``models/preact_resnet.py`` ``CIFAR_ResNet101_Bottle``, which is built of post-activation bottlenecks (1x1, 3x3
    with the stride, 1x1 x4, BN after each, ReLU after the addition, 1x1 conv + BN shortcuts where the shape
    changes), 3-4-23-3 of them after a 3x3 stem, i.e. ``CifarResNet4`` at [3, 4, 23, 3] (same layers and order;
    ``tests/golden/test_pskd.py``). Its weights are re-set to PyTorch's default initialisation, as the reference
    calls no init function. ``width``: planes of the first stage (64 in the reference); smaller only for tests."""
    model = CifarResNet4(Bottleneck4, [3, 4, 23, 3], num_classes, width=width)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model
