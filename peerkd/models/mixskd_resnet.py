"""The CIFAR ResNets of the MixSKD code (Yang et al., "MixSKD: Self-Knowledge Distillation from Mixup for Image
Recognition", ECCV 2022): the backbone ``CIFAR_ResNet`` of winycg/Self-KD-Lib ``models/resnet_mixskd.py``
(``MixSKD_CIFAR_ResNet18`` / ``MixSKD_CIFAR_ResNet50`` wrap it with the method's auxiliary branches, which peerkd's
``mixskd`` method builds itself).

Written from reading that file at ede3062d1193626da2bc8a1ceba535d84fb0a08c. It is peerkd's ``resnet18`` /
``resnet50`` (``cifar_resnet4.py``: 3x3 stem of 64 channels, four stages of post-activation basic blocks or
bottlenecks with the stride on the 3x3 convolution, 1x1-conv + BN shortcuts where the shape changes, global pooling,
a linear classifier) with two differences, both the reference's:

- the stem is ``conv3x3 -> BN`` with **no ReLU** (``CIFAR_ResNet.forward``: ``out = self.bn1(self.conv1(x))`` goes
  straight into ``layer1``). Self-KD-Lib's plain ``models/resnet.py`` ``CIFAR_ResNet18`` (its other methods'
  network) has the ReLU; the MixSKD file does not, and the README's MixSKD row (80.32 %) is this network.
- PyTorch's default initialisation (the file calls no init function), not ``init_weights``.

It is not the CS-KD / PS-KD lineage's ``preact_resnet18`` (pre-activation blocks, conv-only shortcuts, 11,217,444
parameters): both that network and ``resnet18`` fail the golden network check of this one.

Parameters at 100 classes: 11,220,132 (ResNet-18, as ``resnet18``), 23,705,252 (ResNet-50); the reference's
state_dict names and shapes and its forward are held in ``tests/golden/test_selfkdlib_mixskd.py``
(``conv1`` / ``bn1`` -> ``stem.0`` / ``stem.1``, ``layer{s}.{b}`` -> ``stages.{s-1}.{b}``, ``downsample`` ->
``shortcut``, ``fc`` -> ``head.fc``). ``blocks`` and ``width`` exist for small test networks (the golden case runs
``blocks: [1, 1, 1, 1]``, a network the reference's own ``ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1])`` builds).
"""
from __future__ import annotations

from torch import nn

from peerkd.models.cifar_resnet4 import BasicBlock4, Bottleneck4, CifarResNet4
from peerkd.models.registry import register_model


class MixSKDResNet(CifarResNet4):
    """``CifarResNet4`` with the MixSKD code's stem (3x3 conv, BN, no ReLU) and PyTorch's default initialisation."""

    def __init__(self, block: type, blocks: list[int], num_classes: int, width: int = 64):
        super().__init__(block, list(blocks), num_classes, width=width)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        for module in self.modules():  # undo init_weights: the reference keeps PyTorch's defaults
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.reset_parameters()


@register_model("resnet18_mixskd", "CIFAR ResNet-18 of the MixSKD code (Self-KD-Lib resnet_mixskd.py: stem without "
                "ReLU)")
def resnet18_mixskd(num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 64) -> MixSKDResNet:
    return MixSKDResNet(BasicBlock4, list(blocks), num_classes, width=width)


@register_model("resnet50_mixskd", "CIFAR ResNet-50 of the MixSKD code (Self-KD-Lib resnet_mixskd.py: stem without "
                "ReLU)")
def resnet50_mixskd(num_classes: int, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64) -> MixSKDResNet:
    return MixSKDResNet(Bottleneck4, list(blocks), num_classes, width=width)
