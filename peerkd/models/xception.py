"""Xception (Chollet, CVPR 2017) for 32x32 CIFAR images.

Chollet's entry / middle / exit flows with depthwise-separable convolutions and residual connections, adapted to
CIFAR as usual: the stem is two stride-1 3x3 convolutions (32 and 64 channels) instead of the stride-2 one, so the
three entry blocks (128, 256, 728 channels, each ending in a stride-2 3x3 max-pool) take 32x32 to 4x4; the middle
flow is eight residual blocks of three 728-channel separable convolutions; the exit flow is a block 728 -> 1024 with
a stride-2 pool (2x2) and two separable convolutions (1536, 2048 channels), then global pooling and a linear layer.

Stages (for ``forward_stages`` and ``branched``): [entry flow blocks, middle flow, exit flow], with 728, 728 and 2048
channels; branching the last stage gives every branch its own exit flow.
"""
from __future__ import annotations

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, no bias (BN follows)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """``channels`` separable convolutions (each preceded by ReLU, followed by BN), an optional stride-2 max-pool,
    plus a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_ch: int, channels: list[int], downsample: bool, relu_first: bool = True):
        super().__init__()
        layers, ch = [], in_ch
        for i, out in enumerate(channels):
            if i > 0 or relu_first:
                layers.append(nn.ReLU(inplace=False))
            layers += [SeparableConv(ch, out), nn.BatchNorm2d(out)]
            ch = out
        if downsample:
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(*layers)
        stride = 2 if downsample else 1
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, ch, 1, stride, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class CifarXception(Backbone):
    def __init__(self, num_classes: int, middle_blocks: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                  nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        entry = nn.Sequential(XceptionBlock(64, [128, 128], True, relu_first=False),
                              XceptionBlock(128, [256, 256], True), XceptionBlock(256, [728, 728], True))
        middle = nn.Sequential(*[XceptionBlock(728, [728, 728, 728], False) for _ in range(middle_blocks)])
        exit_flow = nn.Sequential(XceptionBlock(728, [728, 1024], True),
                                  SeparableConv(1024, 1536), nn.BatchNorm2d(1536), nn.ReLU(inplace=True),
                                  SeparableConv(1536, 2048), nn.BatchNorm2d(2048), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList([entry, middle, exit_flow])
        self.stage_channels = [728, 728, 2048]
        self.head = ClassifierHead(2048, num_classes)
        init_weights(self)


@register_model("xception", "Xception (Chollet 2017) for CIFAR: stride-1 stem, entry/middle(8)/exit flows, 2048-d")
def xception(num_classes: int, **kwargs) -> CifarXception:
    return CifarXception(num_classes, **kwargs)
