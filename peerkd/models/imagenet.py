"""ImageNet-style networks from torchvision, regrouped into the stem / stages / head contract.

torchvision builds the layers and initialises them (its own init: He fan-out for convolutions, BN 1 / 0, and for
MobileNetV2 a N(0, 0.01) classifier); no pretrained weights are loaded. Registered as ``tv_*`` so the names cannot
clash with other ImageNet-style backbones in peerkd.

ResNet (He et al. 2016; torchvision ``resnet18/34/50/101``): stem = 7x7 conv stride 2 + BN + ReLU + 3x3 max-pool;
stages = ``layer1 .. layer4`` (strides 4, 8, 16, 32); head = global pooling + linear.

MobileNetV2 (Sandler et al. 2018; torchvision ``mobilenet_v2(width_mult=w)``): stem = the first 3x3 conv stride 2;
stages = the inverted-residual blocks grouped by resolution (strides 2, 4, 8, 16, 32), the last stage ending with the
1x1 conv to 1280 x max(1, w) channels; head = global pooling + dropout 0.2 + linear, as torchvision's classifier.
Widths 0.5, 1.0 and 1.2 are the KDCL paper's MBV2x0.5, MBV2 and MobileNetV2x1.2.
"""
from __future__ import annotations

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model


class DropoutClassifierHead(ClassifierHead):
    """Global average pooling, dropout, linear classifier (MobileNetV2's head)."""

    def __init__(self, fc: nn.Linear, dropout: float):
        super().__init__(fc.in_features, fc.out_features)
        self.fc = fc  # keep torchvision's initialisation
        self.dropout = nn.Dropout(dropout)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class TorchvisionResNet(Backbone):
    def __init__(self, depth: int, num_classes: int, zero_init_residual: bool = False):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes,
                                                           zero_init_residual=zero_init_residual)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [_out_channels(stage) for stage in self.stages]
        self.head = ClassifierHead(net.fc.in_features, num_classes)
        self.head.fc = net.fc


def _out_channels(stage: nn.Sequential) -> int:
    """Channels after a ResNet stage: its last block's last BatchNorm (bn3 for bottlenecks, bn2 for basic blocks)."""
    block = stage[-1]
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


class TorchvisionMobileNetV2(Backbone):
    def __init__(self, width: float, num_classes: int, dropout: float = 0.2):
        super().__init__()
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width,
                                              dropout=dropout)
        features = list(net.features)
        self.stem = features[0]
        stages: list[list[nn.Module]] = []
        for block in features[1:-1]:
            if not stages or block.stride == 2:
                stages.append([])
            stages[-1].append(block)
        stages[-1].append(features[-1])  # the final 1x1 conv belongs to the last stage, so its output feeds the head
        self.stages = nn.ModuleList([nn.Sequential(*blocks) for blocks in stages])
        self.stage_channels = [blocks[-1].out_channels for blocks in stages]
        self.head = DropoutClassifierHead(net.classifier[1], dropout)


def _register_resnet(depth: int):
    @register_model(f"tv_resnet{depth}", f"ImageNet ResNet-{depth} (torchvision layers, He et al. 2016)")
    def factory(num_classes: int, zero_init_residual: bool = False) -> TorchvisionResNet:
        return TorchvisionResNet(depth, num_classes, zero_init_residual)
    return factory


def _register_mobilenet(width: float):
    tag = f"{width:.1f}".replace(".", "_")

    @register_model(f"tv_mobilenetv2_w{tag}", f"MobileNetV2 x{width} (torchvision layers, Sandler et al. 2018)")
    def factory(num_classes: int, dropout: float = 0.2) -> TorchvisionMobileNetV2:
        return TorchvisionMobileNetV2(width, num_classes, dropout)
    return factory


for _depth in (18, 34, 50, 101):
    _register_resnet(_depth)
for _width in (0.5, 1.0, 1.2):
    _register_mobilenet(_width)
