"""The CIFAR DenseNet-BC of the PS-KD and CS-KD code: ``CIFAR_DenseNet121`` (Huang et al., "Densely Connected
Convolutional Networks", CVPR 2017, DenseNet-121's 6-12-24-16 blocks at growth 32, on 32 px images).

Written from reading lgcnsai/PS-KD-Pytorch ``models/densenet_cifar.py`` (PS-KD's CIFAR-100 table, "DenseNet-121") and
alinlab/cs-kd ``models/densenet3.py`` (the CS-KD paper's CIFAR DenseNet-121): the two define the same network (their
files differ only in default arguments and comments). ``tests/golden/test_pskd.py`` holds the reference's
state_dict names and shapes, its parameter count and its forward against this one; ``tests/golden/test_cskd.py`` a
small variant (``blocks``, ``growth``) with the reference's weights through CS-KD's training step.

Structure (what those files build): a 3x3 conv stem (2 x growth channels, no bias, no BN); four dense stages of
bottleneck layers ``new = conv3x3(ReLU(BN(conv1x1(ReLU(BN(x))))))`` (4 x growth inner channels, growth outputs)
concatenated as ``cat([new, x])`` (new features first); after stages 1-3 a transition BN -> ReLU -> 1x1 conv to
floor(channels x 0.5) -> 2x2 average pooling; after stage 4 BN -> ReLU (kept in the last stage here so that
``forward_stages`` returns the activated map), 4x4 average pooling (= global at 32 px) and a linear classifier with
bias. PyTorch's default initialisation (the references call no init function).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model
from peerkd.models.wrn import FinalActivation


class DenseBottleneck(nn.Module):
    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([new, x], 1)  # the new features first, as the references concatenate


class Transition(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(Backbone):
    """DenseNet-BC of the PS-KD / CS-KD code: ``blocks`` bottleneck layers per stage, ``growth`` channels each."""

    def __init__(self, blocks: list[int], growth: int, num_classes: int, reduction: float = 0.5):
        super().__init__()
        channels = 2 * growth
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        stages, self.stage_channels = [], []
        for i, count in enumerate(blocks):
            layers = []
            for _ in range(count):
                layers.append(DenseBottleneck(channels, growth))
                channels += growth
            if i < len(blocks) - 1:
                out = math.floor(channels * reduction)
                layers.append(Transition(channels, out))
                channels = out
            else:
                layers.append(FinalActivation(channels))
            stages.append(nn.Sequential(*layers))
            self.stage_channels.append(channels)
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(channels, num_classes)


@register_model("densenet121_cifar", "CIFAR DenseNet-BC-121 of the PS-KD and CS-KD code (growth 32, 7.0 M)")
def densenet121_cifar(num_classes: int, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32) -> CifarDenseNet:
    """``blocks`` / ``growth``: DenseNet-121's 6-12-24-16 at growth 32 in both references; smaller only for tests."""
    return CifarDenseNet(list(blocks), growth, num_classes)
