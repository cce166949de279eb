"""CIFAR ResNeXt of Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017, sec. 5.3.

ResNeXt-29 (C x d): a 3x3 conv stem with 64 channels, three stages of 3 bottleneck blocks (9 blocks x 3 layers + stem +
classifier = 29), each block 1x1 conv -> grouped 3x3 conv (C groups, C*d channels in stage 1, doubled at every stage)
-> 1x1 conv to 256 / 512 / 1024 output channels, BN after every conv and a 1x1 conv + BN projection shortcut where the
shape changes. Stages 2 and 3 halve the resolution in their first block's 3x3 conv. ``resnext29_2x64d`` is the CSS
Table 1 network (C = 2, d = 64); ``resnext29_8x64d`` and ``resnext29_16x64d`` are Xie et al.'s CIFAR models.
"""
from __future__ import annotations

from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet4 import Bottleneck4
from peerkd.models.init import init_weights
from peerkd.models.registry import register_model


class CifarResNeXt(Backbone):
    def __init__(self, cardinality: int, bottleneck_width: int, num_classes: int, blocks_per_stage: int = 3):
        super().__init__()
        stem_width, out_widths = 64, [256, 512, 1024]
        self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
                                  nn.ReLU(inplace=True))
        stages, in_ch = [], stem_width
        for i, out_ch in enumerate(out_widths):
            blocks = []
            for b in range(blocks_per_stage):
                # the bottleneck of ResNeXt-50: with planes = out_ch / 4 = 64 * 2**i its grouped 3x3 convolution is
                # C * d * 2**i channels wide, as here
                blocks.append(Bottleneck4(in_ch, out_ch // Bottleneck4.expansion, stride=2 if (i > 0 and b == 0) else 1,
                                          groups=cardinality, base_width=bottleneck_width))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = out_widths
        self.head = ClassifierHead(out_widths[-1], num_classes)
        init_weights(self)


def _register(cardinality: int, width: int):
    @register_model(f"resnext29_{cardinality}x{width}d",
                    f"CIFAR ResNeXt-29 ({cardinality}x{width}d, Xie et al. 2017), stages 256-512-1024")
    def factory(num_classes: int) -> CifarResNeXt:
        return CifarResNeXt(cardinality, width, num_classes)
    return factory


for _c, _w in [(2, 64), (8, 64), (16, 64)]:
    _register(_c, _w)
