"""MobileNetV2 (Sandler et al., CVPR 2018) for 32x32 CIFAR images, as the CIFAR online / offline KD code builds it.

The network of HobbitLong/RepDistiller ``models/mobilenetv2.py`` (the file the SwitOKD authors copy, hfutqian/SwitOKD
``SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2/models/mobilenetv2.py``, ``mobile_half``): a stride-2 3x3 conv-BN-ReLU
stem with ``int(32 w)`` channels; the inverted-residual settings (t, c, n, s) = (1, 16, 1, 1), (T, 24, 2, 1),
(T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1) with widths ``int(c w)``; a 1x1
conv-BN-ReLU to 1280 channels (``int(1280 w)`` only for w > 1); average pooling of the 2x2 map; a linear classifier.
Every block is 1x1 expand conv-BN-ReLU, 3x3 depthwise conv-BN-ReLU, 1x1 project conv-BN, with the identity added when
the stride is 1 and the widths match, including the expansion-1 first block (whose "expand" conv is a 1x1 conv of
the same width: the reference keeps it). Convolutions have no bias.

Stages (the reference's feature taps f1..f4: after blocks 1, 2, 4 and 6): [blocks 0-1], [block 2], [blocks 3-4],
[blocks 5-6 + the 1x1 conv to 1280], so ``head`` stays pooling plus linear. The state_dict order is the reference's
(stem, blocks in order, the last conv, classifier). Initialisation as the reference's ``_initialize_weights``:
convolutions N(0, sqrt(2 / (k*k*out))), BN weight 1 / bias 0, linear N(0, 0.01) with bias 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1)]  # (expansion, channels, blocks, first stride); None: the T option
STAGE_BLOCKS = [(0, 1), (2,), (3, 4), (5, 6)]  # the block groups ending at the reference's feature taps


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(Backbone):
    def __init__(self, num_classes: int, width: float = 0.5, expansion: int = 6):
        super().__init__()
        in_ch = int(32 * width)
        self.stem = conv_bn_relu(3, in_ch, 3, 2)
        blocks, widths = [], []
        for t, c, n, s in SETTINGS:
            out_ch = int(c * width)
            group = []
            for b in range(n):
                group.append(InvertedResidual(in_ch, out_ch, s if b == 0 else 1, expansion if t is None else t))
                in_ch = out_ch
            blocks.append(group)
            widths.append(out_ch)
        last = int(1280 * width) if width > 1.0 else 1280
        stages = [nn.Sequential(*[block for i in group for block in blocks[i]]) for group in STAGE_BLOCKS]
        stages[-1].append(conv_bn_relu(in_ch, last, 1, 1))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [widths[group[-1]] for group in STAGE_BLOCKS[:-1]] + [last]
        self.head = ClassifierHead(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


@register_model("mobilenetv2_half", "MobileNetV2 x0.5, expansion 6, for CIFAR (RepDistiller / SwitOKD mobile_half)")
def mobilenetv2_half(num_classes: int) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, width=0.5, expansion=6)


@register_model("mobilenetv2_cifar", "MobileNetV2 for CIFAR (RepDistiller mobilenetv2_T_w): width and expansion set")
def mobilenetv2_cifar(num_classes: int, width: float = 1.0, expansion: int = 6) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, width=width, expansion=expansion)
