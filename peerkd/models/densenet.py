"""DenseNet for CIFAR, Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017, section 3-4 (the basic DenseNet, not DenseNet-BC).

DenseNet-L-k: a 3x3 convolution with 16 channels, three dense blocks of (L - 4) / 3 layers separated by
transitions, each layer BN-ReLU-Conv3x3 producing k new channels concatenated to its input; a transition is
BN-ReLU-Conv1x1 (channels kept: no compression in the basic form) and 2x2 average pooling; a final BN-ReLU, global
average pooling and a linear classifier. DenseNet-40-12: 12 layers per block, 16 -> 160 -> 304 -> 448 channels.
The paper's dropout 0.2 applies only to its runs without augmentation, so ``dropout`` defaults to 0.

Contract: ``stem`` the first convolution; ``stages[0]`` dense block 1; ``stages[1]`` transition 1 + block 2;
``stages[2]`` transition 2 + block 3 + the final BN-ReLU (so its map is activated, as the head expects).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model
from peerkd.models.wrn import FinalActivation


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` channels, concatenated after the input."""

    def __init__(self, in_ch: int, growth: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, growth, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv(F.relu(self.bn(x)))
        if self.dropout > 0:
            new = F.dropout(new, self.dropout, self.training)
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return F.avg_pool2d(out, 2)


class CifarDenseNet(Backbone):
    def __init__(self, depth: int, growth: int, num_classes: int, dropout: float = 0.0, stem_channels: int = 16):
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        layers_per_block = (depth - 4) // 3
        self.stem = nn.Conv2d(3, stem_channels, 3, padding=1, bias=False)
        stages, channels, stage_channels = [], stem_channels, []
        for block in range(3):
            modules: list[nn.Module] = []
            if block > 0:
                modules.append(Transition(channels, channels, dropout))
            for _ in range(layers_per_block):
                modules.append(DenseLayer(channels, growth, dropout))
                channels += growth
            if block == 2:
                modules.append(FinalActivation(channels))
            stages.append(nn.Sequential(*modules))
            stage_channels.append(channels)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = stage_channels
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)


def _register(depth: int, growth: int):
    @register_model(f"densenet{depth}_{growth}", f"CIFAR DenseNet-{depth}-{growth} (Huang et al. 2017, basic form)")
    def factory(num_classes: int, dropout: float = 0.0) -> CifarDenseNet:
        return CifarDenseNet(depth, growth, num_classes, dropout)
    return factory


for _depth, _growth in [(40, 12), (100, 12), (100, 24), (22, 4)]:
    _register(_depth, _growth)
