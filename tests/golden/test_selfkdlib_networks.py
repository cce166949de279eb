"""peerkd's ``preact_resnet18`` against winycg/Self-KD-Lib's ``CIFAR_ResNet18`` (``models/resnet.py``: a 3x3 conv -
BN - ReLU stem, four stages of two pre-activation basic blocks whose shortcut takes the activated input, no BN-ReLU
after the last block, global average pooling and a biased linear classifier: the network of the library's ResNet-18
CIFAR-100 rows, BAKE's and FRSKD's included) at the commit in the fixture's meta, at 100 classes.

The reference's state_dict shapes paired in order with peerkd's and the same parameter count (11,217,444); with the
reference's weights (made by ``rule_weights`` from its names) the same logits on a batch of 4 in training mode and in
evaluation mode after it, and the gradient of every parameter of a cross-entropy loss. Tolerance: ``fixture.RTOL``.
Regenerate with ``python tools/golden/selfkdlib_networks.py --repo PATH``.
"""
from __future__ import annotations

from peerkd.models import build_model
from tests.golden import fixture
from tests.golden.network_check import check_network

GOLDEN = fixture.load("selfkdlib_networks")


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "winycg/Self-KD-Lib"
    assert GOLDEN.meta["commit"] == "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
    assert set(GOLDEN.meta["case"]["networks"]) == {"preact_resnet18"}


def test_preact_resnet18_equals_cifar_resnet18():
    entry = GOLDEN.meta["case"]["networks"]["preact_resnet18"]
    assert entry["reference"] == "models/resnet.py:CIFAR_ResNet18"
    check_network(GOLDEN, "preact_resnet18", build_model("preact_resnet18", entry["num_classes"]))
