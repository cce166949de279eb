"""VGG with BatchNorm for CIFAR, after Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015 (configurations D = VGG-16 and E = VGG-19).

The CIFAR form used by the distillation benchmarks that the CutⁿMix paper follows (its ref. [26], Xu et al. ECCV
2020, and the CRD code base it builds on): five groups of 3x3 conv-BN-ReLU layers (64, 128, 256, 512, 512
channels; 2-2-3-3-3 convolutions for VGG-16, 2-2-4-4-4 for VGG-19) with a 2x2 max-pool before groups 2-5, then
global average pooling of the 2x2 map and one linear classifier (no 4096-wide fully connected layers).

Contract: ``stem`` is the first conv-BN-ReLU; ``stages[0]`` the rest of group 1; ``stages[1..4]`` a max-pool and
groups 2-5; ``head`` pooling + linear (``head.features`` is the 512-wide vector).
"""
from __future__ import annotations

from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet import init_weights
from peerkd.models.registry import register_model

GROUP_WIDTHS = (64, 128, 256, 512, 512)
GROUP_DEPTHS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4), 11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2)}


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class CifarVGG(Backbone):
    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        if depth not in GROUP_DEPTHS:
            raise ValueError(f"VGG depth must be one of {sorted(GROUP_DEPTHS)}, got {depth}")
        depths = GROUP_DEPTHS[depth]
        self.stem = conv_bn_relu(3, GROUP_WIDTHS[0])
        stages, in_ch = [], GROUP_WIDTHS[0]
        for group, (width, count) in enumerate(zip(GROUP_WIDTHS, depths)):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if group > 0 else []
            for i in range(count - 1 if group == 0 else count):  # the stem holds group 1's first convolution
                layers.append(conv_bn_relu(in_ch, width))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(GROUP_WIDTHS)
        self.head = ClassifierHead(GROUP_WIDTHS[-1], num_classes)
        init_weights(self)


def _register(depth: int):
    @register_model(f"vgg{depth}", f"CIFAR VGG-{depth} with BatchNorm (Simonyan & Zisserman 2015), pooled 512-d head")
    def factory(num_classes: int) -> CifarVGG:
        return CifarVGG(depth, num_classes)
    return factory


for _depth in GROUP_DEPTHS:
    _register(_depth)
