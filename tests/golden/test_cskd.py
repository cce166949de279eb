"""peerkd held against alinlab/cs-kd (Yun et al., CVPR 2020): ``tools/golden/cskd.py`` ran the reference's own
``train.py`` ``train()`` with ``--cls`` (T = 4, lambda = 1) for two steps on its CIFAR DenseNet at a small size.

peerkd's ``cskd`` on ``densenet121_cifar`` at the same size (``blocks: [1, 1, 1, 1]``, ``growth: 4``) with the
reference's weights, plain ``torch.optim.SGD`` as train.py builds it (momentum 0.9, weight decay 1e-4, lr 0.1), the
anchors as ``Batch.x`` and their partners as ``Batch.pair_x``: the anchor and partner logits of both steps, the CE
and class-wise terms, the first step's gradient of every parameter (only the anchor half gets gradients: the
partner pass is under no_grad in both) and the BN running statistics after each step (the partner pass, in training
mode, moves them in both), to ``fixture.RTOL`` (gradients and statistics with the floors of ``test_pskd``).

``cskd_networks``: CS-KD's CIFAR ResNet-18 and DenseNet-121 are peerkd's ``preact_resnet18`` and
``densenet121_cifar`` (the networks of PS-KD's code too): names and shapes, parameter counts (11,217,444 and
7,048,548 at 100 classes) and logits with the same weights, as in ``test_pskd``.

Not compared here (the loader's business, not the step's): the reference draws a partner with
``random.choice(classwise_indices[y])``, which may be the anchor itself (probability 1 / images of the class, 1/500
on CIFAR-100); peerkd's loader draws among the other images of the class.
"""
from __future__ import annotations

import pytest
import torch

from peerkd.config import build_config
from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from peerkd.methods import build_method
from tests.golden import fixture
from tests.golden.rule_weights import map_in_order, pair_names
from tests.golden.test_pskd import assert_close_floor, assert_gradients_equal, check_network


@pytest.fixture(scope="module")
def case():
    return fixture.load("cskd_train")


def run_cskd(case, temperature: float = 4.0):
    meta = case.meta["case"]
    tree = {"name": "cskd", "model": "densenet121_cifar", "model_options": {"blocks": [1, 1, 1, 1], "growth": 4},
            "temperature": temperature, "cls_weight": 1.0}
    method = build_method("cskd", build_config({"method": tree}).method.options, TaskInfo(num_classes=meta["classes"]))
    net = method.models[0]
    weights = case.group("weights")
    net.load_state_dict(map_in_order(weights, net))
    pairs = pair_names({k: tuple(v.shape) for k, v in weights.items()}, net)
    optimizer = torch.optim.SGD(method.parameters(), lr=meta["lr"], momentum=meta["momentum"],
                                weight_decay=meta["weight_decay"])  # train.py's optimizer line
    logits = []
    net.register_forward_hook(lambda module, inputs, output: logits.append(output.detach().clone()))
    out = {"logits": logits, "ce": [], "cls": [], "grads": [], "state": []}
    method.train()
    half = meta["anchors"]
    for s in range(meta["steps"]):
        x, y = case[f"batch/x{s}"], case[f"batch/y{s}"]
        batch = Batch(x=x[:half], y=y[:half], index=torch.arange(half), pair_x=x[half:])
        optimizer.zero_grad()
        step = method(batch)
        step.loss.backward()
        out["ce"].append(step.logs["ce"])
        out["cls"].append(step.logs["cls"])
        named = dict(net.named_parameters())
        out["grads"].append({ref: named[ours].grad.clone() for ref, ours in pairs.items() if ours in named})
        optimizer.step()
        state = net.state_dict()
        out["state"].append({ref: state[ours].clone() for ref, ours in pairs.items() if "running" in ref})
    return out


@pytest.fixture(scope="module")
def peerkd_run(case):
    return run_cskd(case)


def test_logits_and_losses_of_both_steps(case, peerkd_run):
    for s in range(case.meta["case"]["steps"]):
        fixture.assert_close(peerkd_run["logits"][2 * s], case[f"outputs/step{s}/anchor"], f"anchor logits {s}")
        fixture.assert_close(peerkd_run["logits"][2 * s + 1], case[f"outputs/step{s}/partner"], f"partner logits {s}")
        fixture.assert_close(peerkd_run["ce"][s], case[f"loss/step{s}/ce"], f"CE at step {s}")
        fixture.assert_close(peerkd_run["cls"][s], case[f"loss/step{s}/cls"], f"class-wise term at step {s}")


def test_gradient_of_every_parameter(case, peerkd_run):
    tags = sorted({k.split("/")[1] for k in case.arrays if k.startswith("grads/")})
    assert tags
    for tag in tags:
        assert_gradients_equal(peerkd_run["grads"][int(tag.removeprefix("step"))], case.group(f"grads/{tag}"),
                               f"gradient at {tag}")


def test_bn_statistics_after_each_step(case, peerkd_run):
    for s in range(case.meta["case"]["steps"]):
        expected = case.group(f"state/step{s}")
        assert sorted(expected) == sorted(peerkd_run["state"][s])
        for name, value in expected.items():
            assert_close_floor(peerkd_run["state"][s][name].float(), value, f"{name} after step {s}", floor=1.0)


def test_a_wrong_temperature_breaks_the_match(case):
    """The check can fail: T = 3 instead of the reference's 4 changes the class-wise term."""
    run = run_cskd(case, temperature=3.0)
    with pytest.raises(AssertionError):
        fixture.assert_close(run["cls"][0], case["loss/step0/cls"], "class-wise term")


@pytest.mark.parametrize(("name", "count"), [("preact_resnet18", 11_217_444), ("densenet121_cifar", 7_048_548)])
def test_cskd_networks_are_peerkds(name, count):
    networks = fixture.load("cskd_networks")
    assert int(networks[f"state/{name}/parameters"]) == count
    check_network(networks, name)
