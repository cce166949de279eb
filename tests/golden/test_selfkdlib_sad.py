"""peerkd's ``sad`` held against winycg/Self-KD-Lib's SAD (``methods/sad.py``, ``main.py``, on ``models/resnet.py``
``CIFAR_ResNet18``; ``tools/golden/selfkdlib_sad.py`` ran them at the commit in the fixture's meta).

peerkd's ``sad`` on ``preact_resnet18`` (Self-KD-Lib's ``CIFAR_ResNet18``: the same layers in the same order, paired
shape for shape here) with the reference's weights (made by ``rule_weights`` from its names), two steps as
``tests/golden/test_selfkdlib_dks.py`` runs them (main.py's SGD at its warm-up learning rate): each step's logits,
``loss_cls`` (peerkd's ``ce``), ``loss_div`` (``weight x attention``) and the total, the first step's gradient of
every parameter (projections, to 1e-5 of each gradient's norm) and the BN running statistics after the second step.
A wrong weight, power, resizing, or a teacher map left attached (the gradient then also flows into the later stage
through the attention term) each break it (``test_a_wrong_setting_breaks_the_match``).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from peerkd.config import build_config
from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from peerkd.methods import build_method
from tests.golden import fixture
from tests.golden.network_check import assert_gradients
from tests.golden.rule_weights import map_in_order, rule_weights
from tests.golden.test_selfkdlib_dks import reference_steps

GOLDEN = fixture.load("selfkdlib_sad")
CASE = GOLDEN.meta["case"]


def reference_weights(method):
    shapes = {name: tuple(shape) for name, shape in CASE["state_dict"]}
    method.load_state_dict(map_in_order(rule_weights(shapes), method), strict=True)
    return method


def build_sad(**options):
    tree = {"name": "sad", "model": "preact_resnet18", **options}
    method = build_method("sad", build_config({"method": tree}).method.options, TaskInfo(num_classes=CASE["classes"]))
    return reference_weights(method)


@pytest.fixture(scope="module")
def method():
    """One SAD with the reference's weights for the module (built once)."""
    return build_sad()


@pytest.fixture(scope="module")
def run(method):
    seen = []
    method.model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.detach().clone()))
    return {**reference_steps(GOLDEN, method), "logits": list(seen)}


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "winycg/Self-KD-Lib"
    assert GOLDEN.meta["commit"] == "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
    assert (CASE["network"], CASE["weight"], CASE["p"]) == ("models/resnet.py CIFAR_ResNet18", 1000.0, 2)
    assert CASE["parameters"] == 11_217_444


def test_logits_and_losses_of_both_steps(run):
    for s in range(CASE["steps"]):
        logs = run["logs"][s]
        fixture.assert_close(run["logits"][s], GOLDEN[f"outputs/step{s}/logits"], f"logits at step {s}")
        fixture.assert_close(logs["ce"], GOLDEN[f"loss/step{s}/cls"], f"CE at step {s}")
        fixture.assert_close(CASE["weight"] * logs["attention"], GOLDEN[f"loss/step{s}/div"], f"attention at {s}")
        fixture.assert_close(logs["total"], GOLDEN[f"loss/step{s}/total"], f"total at step {s}")


def test_gradient_of_every_parameter(run):
    assert_gradients(run["grads"], CASE["gradient_names"], GOLDEN["state/grad_projection/step0"], "gradient")


def test_bn_statistics_after_the_steps(run):
    assert_gradients(run["running"], CASE["running_names"], GOLDEN["state/running_projection"], "running statistic")


@pytest.mark.parametrize(("option", "value"), [("weight", 100.0), ("power", 1.0), ("resize", "nearest")])
def test_a_wrong_setting_breaks_the_match(method, run, option, value):
    """The check can fail: a tenth of the weight, p = 1, or nearest resizing moves the loss."""
    right = method.options
    method.options = dataclasses.replace(right, **{option: value})
    try:
        reference_weights(method).train()  # the weights before the steps
        x, y = GOLDEN["batch/x0"], GOLDEN["batch/y0"]
        with torch.no_grad():
            step = method(Batch(x=x, y=y, index=torch.arange(len(y))))
    finally:
        method.options = right
    fixture.assert_close(step.logs["ce"], GOLDEN["loss/step0/cls"], "CE (the setting does not enter it)")
    with pytest.raises(AssertionError):
        fixture.assert_close(step.loss, GOLDEN["loss/step0/total"], "total loss")


def test_an_attached_teacher_map_breaks_the_gradients(method, run, monkeypatch):
    """The check can fail on the detach: the later stage's map left attached changes the stages' gradients."""
    reference_weights(method).train()  # the weights before the steps
    method.zero_grad(set_to_none=True)
    monkeypatch.setattr(torch.Tensor, "detach", lambda self: self)  # sad's only detach is the teacher map's
    x, y = GOLDEN["batch/x0"], GOLDEN["batch/y0"]
    method(Batch(x=x, y=y, index=torch.arange(len(y)))).loss.backward()
    monkeypatch.undo()
    names = ["layer2.0.conv1.weight", "layer3.0.conv1.weight", "layer4.0.conv1.weight"]  # later stages: taught too
    grads = {ref: p.grad for ref, p in zip(CASE["gradient_names"], method.parameters()) if ref in names}
    rows = GOLDEN["state/grad_projection/step0"][[CASE["gradient_names"].index(n) for n in names]]
    for name, row in zip(names, rows):
        with pytest.raises(AssertionError):
            assert_gradients({name: grads[name]}, [name], row[None], "gradient")
