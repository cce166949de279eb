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

Both mirror a torchvision model: ``native_spec()`` names it (``library``, ``name``, ``kwargs``) and
``native_state_dict()`` gives the weights in torchvision's key layout (``conv1.*``, ``layer1.*``, ``fc.*``;
``features.i.*``, ``classifier.1.*``), so ``peerkd export --format state_dict`` loads straight into
``torchvision.models.resnet18(num_classes=K)`` without peerkd.
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


def _renamed(state: dict, prefixes: dict[str, str]) -> dict:
    """``state`` with each key's longest matching prefix of ``prefixes`` replaced by its value."""
    out = {}
    for key, value in state.items():
        old = max((p for p in prefixes if key.startswith(p)), key=len, default="")
        out[prefixes.get(old, old) + key[len(old):]] = value
    return out


class TorchvisionResNet(Backbone):
    def __init__(self, depth: int, num_classes: int, zero_init_residual: bool = False):
        super().__init__()
        import torchvision

        self.depth, self.num_classes = depth, num_classes
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes,
                                                           zero_init_residual=zero_init_residual)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [_out_channels(stage) for stage in self.stages]
        self.head = ClassifierHead(net.fc.in_features, num_classes)
        self.head.fc = net.fc

    def native_spec(self) -> dict:
        """The torchvision constructor this network mirrors (zero_init_residual only changes the initialisation)."""
        return {"library": "torchvision", "name": f"resnet{self.depth}", "kwargs": {"num_classes": self.num_classes}}

    def native_state_dict(self) -> dict:
        """The weights in torchvision's ResNet keys: stem.0/1 -> conv1/bn1, stages.i -> layer{i+1}, head.fc -> fc."""
        prefixes = {"stem.0.": "conv1.", "stem.1.": "bn1.", "head.fc.": "fc."}
        prefixes.update({f"stages.{i}.": f"layer{i + 1}." for i in range(len(self.stages))})
        return _renamed(self.state_dict(), prefixes)


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
        self.width, self.num_classes, self.dropout_p = width, num_classes, dropout
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

    def native_spec(self) -> dict:
        """The torchvision constructor this network mirrors."""
        return {"library": "torchvision", "name": "mobilenet_v2",
                "kwargs": {"num_classes": self.num_classes, "width_mult": self.width, "dropout": self.dropout_p}}

    def native_state_dict(self) -> dict:
        """The weights in torchvision's MobileNetV2 keys: stem -> features.0, block b of stage s -> features.i (the
        blocks counted in order from 1), head.fc -> classifier.1."""
        prefixes = {"stem.": "features.0.", "head.fc.": "classifier.1."}
        index = 1
        for s, stage in enumerate(self.stages):
            for b in range(len(stage)):
                prefixes[f"stages.{s}.{b}."] = f"features.{index}."
                index += 1
        return _renamed(self.state_dict(), prefixes)


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
