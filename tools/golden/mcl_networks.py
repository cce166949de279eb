"""Golden fixture of the single CIFAR networks of winycg/MCL (``models/resnet.py`` ``ResNet``, ``models/wrn.py``
``WideResNet``, ``models/shufflenetv2.py`` ``ShuffleNetV2``) that its CIFAR-100 tables run and peerkd has under
another lineage: names and shapes, parameter counts, training- and evaluation-mode logits and the CE gradients (as
projections) with weights made by ``tests/golden/rule_weights.py`` (``tools/golden/networks.py``'s format, read by
``tests/golden/network_check.py``). Each network's forward returns ``(logits, embedding)``; the logits are stored.
ResNet-32 is held in the MCL step fixtures (``tools/golden/mcl.py``); HCGNet-A1 / A2 are peerkd's
``peerkd/models/hcgnet.py``, written for these tables.

    python tools/golden/mcl_networks.py --repo /work/.mirror/winycg+MCL/repo
"""
from __future__ import annotations

from mcl import COMMIT, REPOSITORY
from networks import generate

# peerkd tag -> (reference file under models/, a constructor of one network at 100 classes)
NETWORKS = {
    "resnet56": ("resnet", lambda m: m.ResNet(m.BasicBlock, [9, 9, 9], num_classes=100)),
    "resnet110_okddip": ("resnet", lambda m: m.ResNet(m.Bottleneck, [12, 12, 12], num_classes=100)),
    "wrn16_2": ("wrn", lambda m: m.WideResNet(depth=16, num_classes=100, widen_factor=2)),
    "wrn40_2": ("wrn", lambda m: m.WideResNet(depth=40, num_classes=100, widen_factor=2)),
    "wrn28_4": ("wrn", lambda m: m.WideResNet(depth=28, num_classes=100, widen_factor=4)),
    "hcgnet_a1": ("hcgnet", lambda m: m.HCGNet(growth_rate=(12, 24, 36), block_config=(8, 8, 8), num_classes=100)),
    "hcgnet_a2": ("hcgnet", lambda m: m.HCGNet(growth_rate=(24, 36, 64), block_config=(8, 8, 8), num_classes=100)),
    "shufflenetv2": ("shufflenetv2", lambda m: m.ShuffleNetV2(net_size=1, num_classes=100)),
    "shufflenetv2_w0_5": ("shufflenetv2", lambda m: m.ShuffleNetV2(net_size=0.5, num_classes=100)),
}

# networks whose rule-weighted CE gradients float32 does not reproduce to 1e-5 between two implementations that give
# the same logits (measured: the bottleneck ResNet-110's conv1 gradient, norm 783, differs by 1.2e-3 of it;
# ShuffleNetV2 1x's conv1 by 1.4e-4; 0.5x's first BN bias, norm 5.6e-7, by 0.3 of it): their logits in both modes are
# held (the same weights in the same order give the same function, the architecture's check)
# HCGNet's too: its attention softmaxes and BatchNorm1d over the batch of 4 amplify round-off (a 1e-7 change of the
# input moves its float32 logits by 2.5e-5); in float64 peerkd's and the code's HCGNets agree to 7e-14 (logits) and
# 1.3e-12 (gradients), measured with both built from these weights
LOGITS_ONLY = frozenset({"resnet110_okddip", "shufflenetv2", "shufflenetv2_w0_5", "hcgnet_a1", "hcgnet_a2"})


if __name__ == "__main__":
    generate("mcl_networks", REPOSITORY, COMMIT, NETWORKS, __doc__.splitlines()[0],
             forward=lambda net, inputs: net(inputs)[0], logits_only=LOGITS_ONLY)
