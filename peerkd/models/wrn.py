"""Wide Residual Networks, Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

WRN-d-k: depth d = 6n + 4 (the paper's counting: stem conv + 3 stages of n pre-activation basic blocks of two
convolutions + 1x1 shortcut convs) with widths 16k, 32k, 64k after a 16-channel stem; BN-ReLU before every
convolution, a final BN-ReLU before pooling. Dropout between the two convolutions of a block is off by default,
as in the online-KD papers' CIFAR recipes (``dropout`` sets it).

``wrn20_8`` is registered as the same architecture as ``wrn22_8`` (3 blocks per stage, 17.2 M parameters at 100
classes) for runs that used that name. No paper config uses it: the "WRN-20-8" of CSS (paper 000) and CutnMix (paper
003) is the ONE/OKDDip code's bottleneck network ``wide_resnet20_8`` (peerkd/models/cifar_resnet_one.py, 6.87 M):
Zagoruyko's pre-activation WRN has depth 6n + 4, so depth 20 does not exist in that family (RepDistiller's
``models/wrn.py`` asserts it), while OKDDip's ``models/model_cifar/resnet.py`` names ``wide_resnet20_8`` exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if (in_ch == out_ch and stride == 1) else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class FinalActivation(nn.Module):
    """The last BN-ReLU of a pre-activation network, applied before the head."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(x))


class WideResNet(Backbone):
    def __init__(self, blocks_per_stage: int, widen: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        stages, in_ch = [], 16
        for i, width in enumerate(widths):
            blocks = [WideBlock(in_ch if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1, dropout)
                      for b in range(blocks_per_stage)]
            in_ch = width
            if i == len(widths) - 1:  # the final BN-ReLU belongs to the last stage, so its feature map is activated
                blocks.append(FinalActivation(width))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = widths
        self.head = ClassifierHead(widths[-1], num_classes)
        init_weights(self)


def _register(name: str, blocks: int, widen: int, depth_text: str):
    @register_model(name, f"Wide ResNet {depth_text}-{widen} (Zagoruyko & Komodakis 2016), {blocks} blocks per stage")
    def factory(num_classes: int, dropout: float = 0.0) -> WideResNet:
        return WideResNet(blocks, widen, num_classes, dropout)
    return factory


for _n, _k in [(2, 1), (2, 2), (2, 4), (2, 8), (3, 2), (3, 4), (3, 8), (4, 10), (6, 2), (6, 4), (4, 2), (4, 4)]:
    _register(f"wrn{6 * _n + 4}_{_k}", _n, _k, str(6 * _n + 4))
_register("wrn20_8", 3, 8, "20")  # WRN-22-8's blocks under the name earlier runs used (papers: wide_resnet20_8)
