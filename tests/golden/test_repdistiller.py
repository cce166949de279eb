"""peerkd's CIFAR networks of the RepDistiller lineage against HobbitLong/RepDistiller (``models/resnet.py``,
``models/wrn.py``, ``models/vgg.py``) at the commit in the fixture's meta: ``resnet8/32/110`` (basic blocks,
16-32-64, 1x1-conv + BN shortcuts), ``wrn16_1/16_2/40_2`` (pre-activation WRN-d-k) and ``vgg16_crd`` /
``vgg19_crd`` (biased convolutions, three pools on 32 px, pooled 512-d, one linear layer), all at 100 classes.

For each: the reference's state_dict shapes paired in order with peerkd's and the same parameter count; with the
reference's weights (made by ``rule_weights`` from its names: the networks are too large to store) the same logits on
a batch of 4 in training mode and in evaluation mode after it, and the gradient of every parameter of a cross-entropy
loss. Tolerance: ``fixture.RTOL`` (1e-5 of the largest |value|, of the norm for a
projected gradient). Regenerate with ``python tools/golden/repdistiller.py --repo PATH``.
"""
from __future__ import annotations

import pytest

from peerkd.models import build_model
from tests.golden import fixture
from tests.golden.network_check import check_network

GOLDEN = fixture.load("repdistiller_networks")
NETWORKS = sorted(GOLDEN.meta["case"]["networks"])


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "HobbitLong/RepDistiller"
    assert GOLDEN.meta["commit"] == "b84f547c5db6a35318d4671d7d5c4de74c822403"
    assert set(NETWORKS) == {"resnet8", "resnet32", "resnet110", "wrn16_1", "wrn16_2", "wrn40_2", "vgg16_crd",
                             "vgg19_crd"}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_equals_reference(name):
    entry = GOLDEN.meta["case"]["networks"][name]
    check_network(GOLDEN, name, build_model(name, entry["num_classes"]))
