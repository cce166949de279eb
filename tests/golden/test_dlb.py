"""peerkd's CIFAR networks of CutnMix's code against Meta-knowledge-Lab/DLB (``models/resnet.py``, ``models/vgg.py``)
at the commit in the fixture's meta, under the names peerkd gives them: DLB's ``resnet32`` (basic blocks, 16-32-64) is
``resnet32``; its ``resnet110`` (bottlenecks, 12 a stage) is ``resnet110_one``; its ``wide_resnet20_8`` (2
bottlenecks a stage, 8x wider inside) is ``wide_resnet20_8``; its ``vgg16`` / ``vgg19`` (biased convolutions, five
pools, three linear layers, dropout 0) are ``vgg16_okddip`` / ``vgg19_okddip``; all at 100 classes.

For each: the reference's state_dict shapes paired in order with peerkd's and the same parameter count; with the
reference's weights (made by ``rule_weights`` from its names) the same logits on a batch of 4 in training mode and in
evaluation mode after it, and the gradient of every parameter of a cross-entropy loss. Tolerance: ``fixture.RTOL``
(1e-5 of the largest |value|, of the norm for a projected gradient). Regenerate with
``python tools/golden/dlb.py --repo PATH``.
"""
from __future__ import annotations

import pytest

from peerkd.models import build_model
from tests.golden import fixture
from tests.golden.network_check import check_network

GOLDEN = fixture.load("dlb_networks")
NETWORKS = sorted(GOLDEN.meta["case"]["networks"])


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "Meta-knowledge-Lab/DLB"
    assert GOLDEN.meta["commit"] == "8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0"
    assert set(NETWORKS) == {"resnet32", "resnet110_one", "wide_resnet20_8", "vgg16_okddip", "vgg19_okddip"}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_equals_reference(name):
    entry = GOLDEN.meta["case"]["networks"][name]
    check_network(GOLDEN, name, build_model(name, entry["num_classes"]))
