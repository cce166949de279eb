"""The Wide ResNet of meliketoy/wide-resnet.pytorch ``networks/wide_resnet.py``, as SwitOKD trains it (hfutqian/SwitOKD
``SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2/models/wrnet.py``, ``wrnet16``; the CIFAR-10 and multi-network folders
hold the same file at widths 1, 8 and 10).

It differs from peerkd's ``wrn*`` (Zagoruyko's / RepDistiller's network, peerkd/models/wrn.py) in four ways, each
changing the function, not only the parameter names:

- every convolution has a bias (stem, both block convolutions, the 1x1 shortcut);
- a block's stride is on its second 3x3 convolution (``conv2``), not the first;
- the shortcut takes the block's input ``x``, not its pre-activation ``relu(bn1(x))``: ``conv2(relu(bn2(conv1(
  relu(bn1(x)))))) + shortcut(x)``, the shortcut an identity or a biased 1x1 conv;
- the final BN (before ReLU, pooling and the linear layer) has ``momentum=0.9`` (PyTorch's convention: the running
  statistics move 90 % towards each batch), the others the default 0.1.

Dropout is built but commented out of the reference's forward, so there is none here. Initialisation as the
reference's ``conv_init``: convolutions Xavier-uniform with gain sqrt(2) and bias 0, BN weight 1 / bias 0, the linear
layer PyTorch's default. The final BN-ReLU closes the last stage (stage channels 16k, 32k, 64k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model
from peerkd.models.wrn import FinalActivation


class BiasedWideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=True)
        self.shortcut = None if (in_ch == out_ch and stride == 1) else nn.Conv2d(in_ch, out_ch, 1, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return out + (x if self.shortcut is None else self.shortcut(x))


class MeliketoyWideResNet(Backbone):
    def __init__(self, blocks_per_stage: int, widen: int, num_classes: int):
        super().__init__()
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=True)
        stages, in_ch = [], 16
        for i, width in enumerate(widths):
            blocks = [BiasedWideBlock(in_ch if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1)
                      for b in range(blocks_per_stage)]
            in_ch = width
            if i == len(widths) - 1:
                final = FinalActivation(width)
                final.bn.momentum = 0.9  # the reference's nn.BatchNorm2d(nStages[3], momentum=0.9)
                blocks.append(final)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = widths
        self.head = ClassifierHead(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _register(depth: int, widen: int):
    @register_model(f"wrn{depth}_{widen}_meliketoy", f"Wide ResNet {depth}-{widen} as meliketoy/wide-resnet.pytorch "
                    "builds it (biased convs, stride on conv2, shortcut from the block input; SwitOKD's network)")
    def factory(num_classes: int) -> MeliketoyWideResNet:
        return MeliketoyWideResNet((depth - 4) // 6, widen, num_classes)
    return factory


for _k in (1, 2, 8, 10):
    _register(16, _k)
