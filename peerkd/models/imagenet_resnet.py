"""torchvision's ImageNet ResNets (He et al. 2016, bottleneck v1.5: stride in the 3x3 conv) in the stem / stages /
head contract, for Tiny-ImageNet and the fine-grained sets (CSS Table 3 uses ResNet-50).

stem = conv 7x7/2 (64) + BN + ReLU + max-pool 3x3/2; stages = torchvision's layer1..layer4 (256, 512, 1024, 2048
channels for ResNet-50); head = global pooling + linear. Weights start from torchvision's initialisation (no
pre-training: online KD trains from scratch). Named ``*_imagenet`` to keep them apart from CIFAR-stem models.
"""
from __future__ import annotations

from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.registry import register_model


class TorchvisionResNet(Backbone):
    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [_block_out(layer[-1]) for layer in self.stages]
        self.head = ClassifierHead(net.fc.in_features, num_classes)
        self.head.fc = net.fc  # torchvision's initialisation of the classifier


def _block_out(block: nn.Module) -> int:
    """Output channels of a torchvision residual block (bottleneck: bn3, basic: bn2)."""
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def _register(arch: str):
    @register_model(f"{arch}_imagenet", f"torchvision {arch} (ImageNet stem 7x7/2 + max-pool), from scratch")
    def factory(num_classes: int) -> TorchvisionResNet:
        return TorchvisionResNet(arch, num_classes)
    return factory


for _arch in ("resnet18", "resnet34", "resnet50"):
    _register(_arch)
