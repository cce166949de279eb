"""BYOT held against its authors' release, ArchipLab-LinfengZhang/pytorch-self-distillation-final @ 47ca93b6
(``resnet.py`` + ``train.py``; fixture written by ``tools/golden/byot_release.py``).

peerkd's ``byot`` with ``recipe: release`` and ``adapter: sepconv`` is the release's network (attention gates
SepConv -> BN -> ReLU -> Upsample -> Sigmoid, separable-conv branches, four FC heads) and its loss (CE on the deepest,
(1 - a) CE + a soft-CE at T without T^2 on the shallow ones, lambda ||A_i(F_i) - F_N||_2 through Linear adaptation
layers, none on classifier 3): the release's weights, mapped by name, give the same outputs, loss, gradient of every
parameter and BN statistics after one step (at 1/32 width, 10 classes: a full-width ResNet-18 does not fit a
fixture), and the full-width networks have the release's parameter names, shapes and counts.
"""
from __future__ import annotations

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.core.registry import build_method
from peerkd.params import count_parameters
from tests.golden import byot_common as common
from tests.golden import fixture
from tests.helpers import build

FIXTURE = "byot_release_resnet18"
OPTIONS = {"recipe": "release", "adapter": "sepconv", "kl_weight": 0.3, "hint_weight": 0.03, "temperature": 3.0}
DEPTH = 4  # classifiers of the release's ResNets: fc1 (after layer1) .. fc4 (the network's own)
RULES = [  # the release's name -> peerkd's (method state_dict); classifier i: its fc{i}, attention{i}, scala{i}
    *common.RESNET_RULES,
    (r"attention(\d)\.0\.op\.(\d+)\.(.+)", lambda m: f"net.adapters.{int(m[1]) - 1}.gate.0.{m[2]}.{m[3]}"),
    (r"attention(\d)\.1\.(.+)", lambda m: f"net.adapters.{int(m[1]) - 1}.gate.1.{m[2]}"),
    (r"scala(\d)\.(\d+)\.op\.(\d+)\.(.+)", lambda m: f"net.adapters.{int(m[1]) - 1}.steps.{m[2]}.{m[3]}.{m[4]}"),
    (rf"fc{DEPTH}\.(.+)", lambda m: f"net.backbone.head.fc.{m[1]}"),
    (r"fc(\d)\.(.+)", lambda m: f"net.heads.{int(m[1]) - 1}.{m[2]}"),
    # train.py's adaptation_layers[k] serves outputs[k + 1] = classifier DEPTH - 1 - k; k = 0 (classifier 3) is
    # built but never used (``if index != 1``)
    (r"adaptation_layers\.(\d)\.(.+)",
     lambda m: f"hint_adapters.{DEPTH - 1 - int(m[1])}.{m[2]}" if int(m[1]) else None),
]
to_peerkd = common.name_map(RULES)


fix = pytest.fixture(scope="module", name="fix")(lambda: fixture.load(FIXTURE))


def test_fixture_is_pinned_to_the_release(fix):
    assert fix.meta["reference"] == "ArchipLab-LinfengZhang/pytorch-self-distillation-final"
    assert fix.meta["commit"] == "47ca93b6a60baaaf127a762e9f19bc70f4f0ffed"


def test_one_step_equals_the_release(fix):
    method = common.byot_method(fix, OPTIONS)
    unused = common.load_reference_weights(method, fix, to_peerkd)
    assert sorted(unused) == ["adaptation_layers.0.bias", "adaptation_layers.0.weight"]
    worst = common.compare_step(fix, common.one_step(method, fix), to_peerkd, unused)
    print(f"{FIXTURE}: max relative difference {worst}")


@pytest.mark.parametrize("wrong", [{"recipe": "luanyunteng"}, {"recipe": "paper"}, {"temperature": 1.0},
                                   {"hint_weight": 0.0}])
def test_another_setting_breaks_the_equality(fix, wrong):
    method = common.byot_method(fix, {**OPTIONS, **wrong})
    if wrong.get("recipe") in ("luanyunteng", "paper"):  # no adaptation layers: copy what maps, compare the loss
        state = method.state_dict()
        state.update({to_peerkd(k): v for k, v in fix.group("weights").items()
                      if to_peerkd(k) in state})
        method.load_state_dict(state)
        result = common.one_step(method, fix)
        assert fixture.max_relative_error(result["loss"], fix["loss/total"]) > 1e-3
        return
    unused = common.load_reference_weights(method, fix, to_peerkd)
    with pytest.raises(AssertionError):
        common.compare_step(fix, common.one_step(method, fix), to_peerkd, unused)


def _full_width_method(model: str):
    config_options = build({"name": "byot", "model": model, **OPTIONS}, TaskInfo(num_classes=100)).options
    with torch.device("meta"):
        return build_method("byot", config_options, TaskInfo(num_classes=100, num_train=50000))


def test_full_width_resnet18_has_the_release_names_shapes_and_count(fix):
    method = _full_width_method("resnet18")
    params = dict(method.named_parameters())
    shapes = common.full_width_shapes(fix, "resnet18")
    assert sorted(to_peerkd(k) for k in shapes) == sorted(n for n in params if not n.startswith("hint_adapters"))
    for name, shape in shapes.items():
        assert tuple(params[to_peerkd(name)].shape) == shape, name
    network = count_parameters(method.net)
    assert network == int(fix["state/full/resnet18/parameters"]) == 12_283_344
    # the release's training loop adds 3 Linear(512, 512) adaptation layers; peerkd builds the 2 its loss uses
    assert count_parameters(method.hint_adapters) == 2 * (512 * 512 + 512)


@pytest.mark.parametrize("model", ["resnet50", "resnext50_32x4d"])
def test_full_width_bottleneck_networks_have_the_release_count(fix, model):
    """Paper 004's ResNeXt-50 runs these adapters (its Table 1: 37.9 M); the gate's BN adds 3,584 parameters."""
    assert count_parameters(_full_width_method(model).net) == int(fix[f"state/full/{model}/parameters"])
