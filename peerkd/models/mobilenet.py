"""MobileNet (v1; Howard et al., 2017) for 32x32 CIFAR images, as kuangliu/pytorch-cifar ``models/mobilenet.py`` builds
it and SwitOKD's multi-network code trains it (hfutqian/SwitOKD ``SwitOKD_code/multi-net results (table 7)/{1T2S,
2T1S}/CIFAR_100_wrn16-10_wrn16-2_mobilenet/models/mobilenet.py``, ``MobileNet``).

A stride-1 3x3 conv-BN-ReLU stem with 32 channels; 13 blocks of 3x3 depthwise conv-BN-ReLU then 1x1 conv-BN-ReLU
with widths 64, 128/2, 128, 256/2, 256, 512/2, 512 x5, 1024/2, 1024 (/2: the depthwise conv has stride 2), so 32x32
ends at 2x2; global average pooling; a linear classifier. Convolutions have no bias. Stages: the blocks grouped by
resolution (64 at 32x32, 128 at 16x16, 256 at 8x8, 512 at 4x4, 1024 at 2x2); the state_dict order is the
reference's. Initialisation: PyTorch's defaults, as the model file (the SwitOKD scripts then re-draw the MobileNet's
weights N(0, 1/fan-in) in ``main.py``; a config that wants that says so).
"""
from __future__ import annotations

from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model

WIDTHS = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]  # the reference's cfg


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class CifarMobileNet(Backbone):
    def __init__(self, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        stages, blocks, in_ch = [], [], 32
        for entry in WIDTHS:
            out_ch, stride = (entry, 1) if isinstance(entry, int) else entry
            if stride == 2 and blocks:  # a new resolution starts a new stage
                stages.append(nn.Sequential(*blocks))
                blocks = []
            blocks.append(DepthwiseSeparable(in_ch, out_ch, stride))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [stage[-1].conv2.out_channels for stage in stages]
        self.head = ClassifierHead(in_ch, num_classes)


@register_model("mobilenet_cifar", "MobileNet v1 for CIFAR (kuangliu/pytorch-cifar; SwitOKD's multi-network student)")
def mobilenet_cifar(num_classes: int) -> CifarMobileNet:
    return CifarMobileNet(num_classes)
