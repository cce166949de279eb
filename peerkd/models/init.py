"""The weight initialisation the CIFAR networks share (ResNet, WRN, VGG, DenseNet, ...), as the online-KD papers'
code initialises them."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, BN weight 1 / bias 0, PyTorch's default for linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
