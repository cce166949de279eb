"""CIFAR SE-ResNets: the ResNets of :mod:`peerkd.models.cifar_resnet` with a squeeze-and-excitation unit in every
block (Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018).

The SE unit rescales the residual branch before the addition: global average pooling, FC to C / r, ReLU, FC to C,
sigmoid, channel-wise product; r = 16 (Hu et al.'s default; the hidden width is at least 1, so the 16-channel stage
has a single hidden unit, as in the common CIFAR SE-ResNet code). ``se_resnet110`` is the CSS Table 1 / 4 network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.cifar_resnet import BasicBlock, CifarResNet
from peerkd.models.registry import register_model


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class SEBasicBlock(BasicBlock):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, reduction: int = 16):
        super().__init__(in_ch, out_ch, stride, shortcut="B")
        self.se = SqueezeExcitation(out_ch, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class CifarSEResNet(CifarResNet):
    def __init__(self, depth: int, num_classes: int, reduction: int = 16, widths=(16, 32, 64)):
        super().__init__(depth, num_classes, widths,
                         block=lambda in_ch, out_ch, stride: SEBasicBlock(in_ch, out_ch, stride, reduction))


def _register(depth: int):
    @register_model(f"se_resnet{depth}", f"CIFAR SE-ResNet-{depth} (Hu et al. 2018 SE units, r=16, in ResNet-{depth})")
    def factory(num_classes: int, reduction: int = 16) -> CifarSEResNet:
        return CifarSEResNet(depth, num_classes, reduction)
    return factory


for _depth in (8, 56, 110):
    _register(_depth)
