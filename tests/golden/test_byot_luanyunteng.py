"""BYOT held against the BYOT CIFAR code luanyunteng/pytorch-be-your-own-teacher @ 8045079f (``models/resnet.py`` +
``train.py``; fixture written by ``tools/golden/byot_luanyunteng.py``), the code whose a = 0.1, lambda = 1e-6, T = 3
paper 004 (PS-KD + BYOT + DMFL) takes.

peerkd's ``byot`` with ``recipe: luanyunteng`` and ``adapter: bottleneck`` is that code's ``multi_resnet18_kd``
(one ``branchBottleNeck`` per shallow stage, a ``middle_fc`` after each) and its loss ((1 - a) CE on every classifier,
the deepest included, a T^2 soft-CE at T, lambda x the squared feature differences summed over the batch): its
weights, mapped by name, give the same outputs, loss, gradient of every parameter and BN statistics after one step
(at 1/32 width, 10 classes: a full-width ResNet-18 does not fit a fixture), at its default lambda = 1e-6 and at
lambda = 1 (where the hint is above round-off), and the full-width networks have its names, shapes and counts.
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

FIXTURE = "byot_luanyunteng_resnet18"
OPTIONS = {"recipe": "luanyunteng", "adapter": "bottleneck", "kl_weight": 0.1, "hint_weight": 1e-6,
           "temperature": 3.0}
RULES = [  # luanyunteng's name -> peerkd's (method state_dict); classifier i = its bottleneck{i}_1 + middle_fc{i}
    *common.RESNET_RULES,
    (r"bottleneck(\d)_1\.(\d+)\.(.+)", lambda m: f"net.adapters.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    (r"middle_fc(\d)\.(.+)", lambda m: f"net.heads.{int(m[1]) - 1}.{m[2]}"),
    (r"fc\.(.+)", lambda m: f"net.backbone.head.fc.{m[1]}"),
    (r"downsample\d_1\..+", lambda m: None),  # built by Multi_ResNet, never called in its forward
]
UNUSED = sorted(f"downsample{i}_1.{k}" for i in (1, 2, 3) for k in ("0.weight", "1.weight", "1.bias"))
to_peerkd = common.name_map(RULES)


fix = pytest.fixture(scope="module", name="fix")(lambda: fixture.load(FIXTURE))


def test_fixture_is_pinned_to_luanyunteng(fix):
    assert fix.meta["reference"] == "luanyunteng/pytorch-be-your-own-teacher"
    assert fix.meta["commit"] == "8045079f9933b3dd694dee5294faac0bd8d54fab"


@pytest.mark.parametrize("hint_weight, tag", [(1e-6, "step"), (1.0, "beta1")])
def test_one_step_equals_luanyunteng(fix, hint_weight, tag):
    method = common.byot_method(fix, {**OPTIONS, "hint_weight": hint_weight})
    unused = common.load_reference_weights(method, fix, to_peerkd)
    assert sorted(n for n in unused if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))) == UNUSED
    loss = "loss/total" if tag == "step" else f"loss/{tag}"
    worst = common.compare_step(fix, common.one_step(method, fix), to_peerkd, unused, grads=tag, loss=loss)
    print(f"{FIXTURE} lambda={hint_weight}: max relative difference {worst}")


@pytest.mark.parametrize("wrong", [{"recipe": "paper"}, {"recipe": "release"}, {"temperature": 1.0},
                                   {"kl_weight": 0.3}])
def test_another_setting_breaks_the_equality(fix, wrong):
    method = common.byot_method(fix, {**OPTIONS, "hint_weight": 1.0, **wrong})
    state = method.state_dict()
    state.update({to_peerkd(k): v for k, v in fix.group("weights").items() if to_peerkd(k) in state})
    method.load_state_dict(state)
    result = common.one_step(method, fix)
    assert fixture.max_relative_error(result["loss"], fix["loss/beta1"]) > 1e-3


def test_full_width_network_has_luanyunteng_names_shapes_and_counts(fix):
    config_options = build({"name": "byot", "model": "resnet18", **OPTIONS}, TaskInfo(num_classes=100)).options
    with torch.device("meta"):
        method = build_method("byot", config_options, TaskInfo(num_classes=100, num_train=50000))
        resnet50 = build_method("byot", build({"name": "byot", "model": "resnet50", **OPTIONS},
                                              TaskInfo(num_classes=100)).options, TaskInfo(num_classes=100))
    params = dict(method.named_parameters())
    shapes = {k: v for k, v in common.full_width_shapes(fix, "multi_resnet18_kd").items() if to_peerkd(k)}
    assert sorted(to_peerkd(k) for k in shapes) == sorted(params)
    for name, shape in shapes.items():
        assert tuple(params[to_peerkd(name)].shape) == shape, name
    unused = {k: v for k, v in common.full_width_shapes(fix, "multi_resnet18_kd").items() if not to_peerkd(k)}
    unused_count = sum(torch.Size(s).numel() for s in unused.values())  # the never-called downsample*_1
    assert count_parameters(method) == int(fix["state/full/multi_resnet18_kd/parameters"]) - unused_count
    resnet50_unused = sum((c * 2048 + 2 * 2048) for c in (256, 512, 1024))  # downsample*_1: 1x1 conv + BN
    assert count_parameters(resnet50) == int(fix["state/full/multi_resnet50_kd/parameters"]) - resnet50_unused
