"""peerkd's ``frskd`` against winycg/Self-KD-Lib's FRSKD (``methods/frskd.py`` ``FRSKD`` / ``Attention``, ``utils.py``
``DistillKL`` at T = 4, ``models/bifpnc.py`` ``CIFAR_ResNet18_BiFPN``; fixture written by
``tools/golden/selfkdlib_frskd.py``): the reference's classifier (``CIFAR_ResNet18`` = ``preact_resnet18``) and its
BiFPN self-teacher (``BiFPNc``, repeat 1, depth [2, 2, 2], width 2) paired in state_dict order with peerkd's
classifier and ``SelfTeacherBiFPN`` (shapes checked, so the module structure and registration order agree), the
reference's weights (``rule_weights`` by name, the stored fusion weights, both classifiers x ``fc_scale``) loaded,
one training-mode step on its batch of 4.

Equal to ``fixture.RTOL``: both networks' logits, each term (the classifier's and the self-teacher's CE, the KL, the
attention term), the code's ``loss_cls`` (the two CEs) and ``loss_div`` (2 KL + 100 attention), the total, and every
parameter's gradient of both networks (projections, ``tests/golden/network_check.py``; the KL's gradient into the
self-teacher included). A wrong setting fails (``test_a_wrong_setting_fails_the_comparison``). And the self-teacher
alone on another shape (``bifpn3``: 3 levels, 2 layers, depth 1, width 1, preact on and off) against ``BiFPNc``.
"""
from __future__ import annotations

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.data.batch import Batch
from peerkd.methods.frskd import SelfTeacherBiFPN
from tests.golden import fixture
from tests.golden.network_check import assert_gradients, load_in_order
from tests.golden.rule_weights import rule_weights
from tests.helpers import build

GOLDEN = fixture.load("selfkdlib_frskd")
CASE = GOLDEN.meta["case"]


def _method(**options):
    method = build({"name": "frskd", "model": "preact_resnet18", **options}, TaskInfo(num_classes=CASE["num_classes"]))
    weights = rule_weights(dict(CASE["shapes"]))
    weights.update({k: v for k, v in GOLDEN.group("weights/").items() if not k.startswith("bifpn3/")})
    for name in ("backbone.fc.weight", "bifpn.fc.weight"):
        weights[name] = weights[name] * CASE["fc_scale"]
    names = {}
    for prefix, module in (("backbone.", method.models[0]), ("bifpn.", method.teacher)):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        names.update({prefix + ref: (module, ours) for ref, ours in load_in_order(module, part).items()})
    assert len(names) == len(weights)
    batch = Batch(x=GOLDEN["batch/x"], y=GOLDEN["batch/y"], index=torch.arange(CASE["batch"]))
    return method.train(), batch, names


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "winycg/Self-KD-Lib"
    assert GOLDEN.meta["commit"] == "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
    assert CASE["T"] == 4.0 and CASE["network"] == "models/bifpnc.py:CIFAR_ResNet18_BiFPN"


def test_frskd_step_equals_the_reference():
    method, batch, names = _method()
    out = method(batch)
    out.loss.backward()
    for term in ("ce", "teacher_ce", "kd", "attention"):
        fixture.assert_close(out.logs[term].reshape(1), GOLDEN[f"loss/{term}"], term)
    logs = out.logs
    fixture.assert_close((logs["ce"] + logs["teacher_ce"]).reshape(1), GOLDEN["loss/cls"], "loss_cls")
    fixture.assert_close((2 * logs["kd"] + 100 * logs["attention"]).reshape(1), GOLDEN["loss/div"], "loss_div")
    fixture.assert_close(out.loss.detach().reshape(1), GOLDEN["loss/total"], "total loss")
    grads = {}
    for ref, (module, ours) in names.items():
        param = dict(module.named_parameters()).get(ours)
        if param is not None:
            grads[ref] = param.grad if param.grad is not None else torch.zeros_like(param)
    assert_gradients(grads, CASE["gradient_names"], GOLDEN["state/grad_projection/step0"], "gradient")
    for module in method.modules():  # the step moved the BN statistics: look again with the same batch statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0
    with torch.no_grad():
        maps = method.models[0].forward_stages(batch.x)
        fixture.assert_close(method.models[0].head(maps[-1]), GOLDEN["outputs/logits"], "classifier logits")
        fixture.assert_close(method.teacher(maps)[1], GOLDEN["outputs/teacher_logits"], "self-teacher logits")


@pytest.mark.parametrize("wrong", [{"temperature": 3.0}, {"teacher_gradient": "student"}])
def test_a_wrong_setting_fails_the_comparison(wrong):
    """T 3 moves the KL term; a detached self-teacher in the KL keeps the loss but changes the self-teacher's
    classifier gradient (the weights 1 / 50 in place of 2 / 100: ``test_the_code_weights_are_needed``)."""
    method, batch, names = _method(**wrong)
    out = method(batch)
    if "temperature" in wrong:
        with pytest.raises(AssertionError, match="kd"):
            fixture.assert_close(out.logs["kd"].reshape(1), GOLDEN["loss/kd"], "kd")
        return
    fixture.assert_close(out.loss.detach().reshape(1), GOLDEN["loss/total"], "total loss")
    out.loss.backward()
    name = "bifpn.fc.weight"
    module, ours = names[name]
    row = GOLDEN["state/grad_projection/step0"][CASE["gradient_names"].index(name)].unsqueeze(0)
    with pytest.raises(AssertionError, match=name):
        assert_gradients({name: dict(module.named_parameters())[ours].grad}, [name], row, "gradient")


def test_the_code_weights_are_needed():
    """loss_div is 2 KL + 100 attention: weights 1 and 50 (or 2 and 50, 1 and 100) do not give it."""
    terms = {k: GOLDEN[f"loss/{k}"] for k in ("kd", "attention")}
    for kd_weight, attention_weight in ((1.0, 50.0), (2.0, 50.0), (1.0, 100.0)):
        with pytest.raises(AssertionError):
            fixture.assert_close(kd_weight * terms["kd"] + attention_weight * terms["attention"], GOLDEN["loss/div"],
                                 "loss_div")


@pytest.mark.parametrize("preact", [True, False])
def test_self_teacher_over_three_stages_two_layers_equals_bifpnc(preact):
    """The BiFPN on another shape than the ResNet-18's (3 levels, repeat 2, depth 1, width 1; the second layer's
    non-preact maps, the preact switch): refined maps, logits, the gradients into the input maps and every
    parameter."""
    spec = CASE["bifpn3"]
    teacher = SelfTeacherBiFPN(spec["channels"], spec["classes"], spec["width"], tuple(spec["depth"]), spec["repeat"])
    weights = rule_weights(dict(spec["shapes"]))
    weights.update(GOLDEN.group("weights/bifpn3/"))
    names = load_in_order(teacher, weights)
    teacher.train()
    maps = [GOLDEN[f"bifpn3/input/{i}"].clone().requires_grad_(True) for i in range(len(spec["channels"]))]
    feats, logits = teacher(maps, preact)
    readout = logits.pow(2).sum() + sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats)
    readout.backward()
    tag = f"bifpn3/preact{int(preact)}"
    fixture.assert_close(logits, GOLDEN[f"{tag}/logits"], "logits")
    fixture.assert_close(readout.detach().reshape(1), GOLDEN[f"{tag}/readout"], "read-out")
    for i, (f, m) in enumerate(zip(feats, maps)):
        fixture.assert_close(f, GOLDEN[f"{tag}/feat/{i}"], f"refined map {i}")
        fixture.assert_close(m.grad, GOLDEN[f"{tag}/input_grad/{i}"], f"gradient into stage map {i}")
    params = dict(teacher.named_parameters())
    assert_gradients({ref: params[ours].grad for ref, ours in names.items() if ours in params},
                     spec["gradient_names"], GOLDEN[f"{tag}/grad_projection"], "gradient")
