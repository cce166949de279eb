"""peerkd held against Lan1991Xu/ONE_NeurIPS2018, ONE's own code (fixtures by ``tools/golden/one.py``; shared parts
in ``lineage.py``): peerkd's ``one`` with its defaults (3 branches, the gate with BN + ReLU, the ensemble CE, the
teacher detached in the KL: ``target_gradient: none``, T = 3, the 80-epoch ramp-up) and ONE's own ResNet-110
(``resnet110_lan``).

Tolerance: ``fixture.RTOL`` (1e-5 of each reference tensor's largest |value|) everywhere. ONE's ``KLLoss`` adds 1e-7
to the teacher's probabilities and peerkd's KL does not; at the fixtures' 10 classes that is ~1e-6 of the scale.
"""
from __future__ import annotations

import torch

from peerkd.data import Batch
from peerkd.models import build_model
from tests.golden import fixture, lineage
from tests.helpers import build, tiny_task

COMMIT = "54afde30fe039c8bd66668f0d17944b451b8b189"
EPOCHS = (0, 40, 100)
GATE = {"control_v1": "gate.fc", "bn_v1": "gate.bn"}


def one_name(name: str) -> str:
    """ONE_ResNet's names (``layer3_1..3``, ``classfier3_1..3``: branches from 1) as peerkd ``one``'s."""
    return lineage.resnet_name(name, **lineage.BRANCHED, first_branch=1, extra=GATE)


def test_one_defaults_equal_lans_step():
    """peerkd's ``one`` with nothing but the backbone set: outputs, loss, every gradient (sketched) at epochs 0, 40,
    100 and the ramp-up of every epoch equal ``cifar_one.py``'s step on ``one_resnet(depth=8)``."""
    fix = fixture.load("one_lan_step")
    assert fix.meta["commit"] == COMMIT
    method = build({"name": "one", "model": "resnet8"}, tiny_task(fix.meta["case"]["classes"]))
    lineage.assert_step_equal(method, fix, one_name, lan_outputs, "ONE (Lan)", EPOCHS)


def lan_outputs(method, x):
    """``ONE_ResNet``'s outputs as peerkd computes them: the branch logits (B x classes x 3) and the ensemble."""
    ensemble, _, logits = method.gated_ensemble(method.group(x))
    return {"branches": logits.transpose(1, 2), "ensemble": ensemble}


def test_resnet110_lan_is_ones_resnet110():
    """``resnet110_lan`` = ``models/cifar/resnet.py`` ``ResNet(depth=110)`` (18 bottlenecks a stage): names, shapes,
    1,727,284 parameters and the eval-mode logits; ``one`` on it = ``ONE_ResNet(depth=110)``: 4,363,653 parameters,
    the branch logits and the gated ensemble."""
    fix = fixture.load("one_lan_networks")
    assert fix.meta["commit"] == COMMIT
    info = fix.meta["case"]["networks"]
    x = fix["batch/x"]
    model = build_model("resnet110_lan", 100)
    assert sum(p.numel() for p in model.parameters()) == info["resnet"]["params"] == 1_727_284
    lineage.load_mapped(model, lineage.formula_state(info["resnet"]["shapes"]),
                        lambda k: lineage.resnet_name(k, **lineage.PLAIN))
    with torch.no_grad():
        fixture.assert_close(model.eval()(x), fix["outputs/resnet"], "resnet110_lan logits")
    method = build({"name": "one", "model": "resnet110_lan"}, tiny_task(100))
    assert sum(p.numel() for p in method.parameters()) == info["one_resnet"]["params"] == 4_363_653
    lineage.load_mapped(method, lineage.formula_state(info["one_resnet"]["shapes"]), one_name)
    with torch.no_grad():
        preds = method.eval().predict(x)
    fixture.assert_close(torch.stack([preds[f"branch{i}"] for i in range(3)], -1), fix["outputs/one_resnet"],
                         "ONE branch logits")
    fixture.assert_close(preds["ensemble"], fix["outputs/one_resnet_ensemble"], "ONE gated ensemble")


def test_okddips_one_is_the_other_side_of_the_switch():
    """The two codes' ONE differ only in the teacher's gradient: with Lan's weights and batch, ``target_gradient:
    full`` (OKDDip's re-implementation, held in test_okddip.py) moves the gate's gradient away from Lan's, which
    ``none`` matches (above)."""
    fix = fixture.load("one_lan_step")
    method = build({"name": "one", "model": "resnet8", "target_gradient": "full"},
                   tiny_task(fix.meta["case"]["classes"]))
    lineage.load_mapped(method, lineage.formula_state(fix.meta["case"]["shapes"]), one_name)
    method.train()
    method.on_epoch_start(100, 300)
    method.forward(Batch(x=fix["batch/x"], y=fix["batch/y"], index=torch.arange(8))).loss.backward()
    expected = fix["grads/epoch100/control_v1.weight"]
    error = fixture.max_relative_error(method.gate.fc.weight.grad, expected)
    assert error > 1e-3, f"the undetached teacher should change the gate's gradient (relative change {error:.2g})"
