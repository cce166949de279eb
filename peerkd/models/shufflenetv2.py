"""ShuffleNet V2 (Ma et al., ECCV 2018) at width 1.0, for 32x32 CIFAR images.

The ImageNet network's units and widths (stages of 4, 8 and 4 units with 116, 232 and 464 channels, then a 1x1
convolution to 1024 channels) with the usual CIFAR stem: one stride-1 3x3 convolution with 24 channels and no
max-pool, so the three stride-2 stage entries take 32x32 to 4x4. A stride-1 unit splits the channels in two, passes
one half through 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU, concatenates and shuffles (2 groups);
a stride-2 unit runs both halves of its input (the whole input) through a branch each and doubles the channels.

Stages: the three unit groups, the last one ending with the 1x1 conv to 1024 channels (so ``head`` stays pooling
plus linear); stage channels 116, 232, 1024.
"""
from __future__ import annotations

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model

WIDTHS = {0.5: (48, 96, 192), 1.0: (116, 232, 464), 1.5: (176, 352, 704), 2.0: (244, 488, 976)}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch_in = in_ch if stride == 2 else in_ch // 2
        self.branch_main = nn.Sequential(conv_bn(branch_in, half, 1), conv_bn(half, half, 3, stride, half, relu=False),
                                         conv_bn(half, half, 1))
        self.branch_short = None
        if stride == 2:
            self.branch_short = nn.Sequential(conv_bn(in_ch, in_ch, 3, 2, in_ch, relu=False), conv_bn(in_ch, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_short is None:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch_main(work)], 1)
        else:
            out = torch.cat([self.branch_short(x), self.branch_main(x)], 1)
        return channel_shuffle(out, 2)


class CifarShuffleNetV2(Backbone):
    def __init__(self, num_classes: int, width: float = 1.0, repeats=(4, 8, 4), last_channels: int = 1024):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(WIDTHS)}, got {width}")
        self.stem = conv_bn(3, 24, 3)
        stages, in_ch = [], 24
        for i, (out_ch, count) in enumerate(zip(WIDTHS[width], repeats)):
            units = [ShuffleUnit(in_ch, out_ch, 2)] + [ShuffleUnit(out_ch, out_ch, 1) for _ in range(count - 1)]
            in_ch = out_ch
            if i == len(repeats) - 1:
                units.append(conv_bn(out_ch, last_channels, 1))
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [*WIDTHS[width][:-1], last_channels]
        self.head = ClassifierHead(last_channels, num_classes)
        init_weights(self)


@register_model("shufflenetv2", "ShuffleNet V2 1.0x (Ma et al. 2018) for CIFAR: stride-1 3x3 stem, no max-pool")
def shufflenetv2(num_classes: int, width: float = 1.0, **kwargs) -> CifarShuffleNetV2:
    return CifarShuffleNetV2(num_classes, width=width, **kwargs)
