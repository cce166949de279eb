"""DML (``peerkd.methods.dml``) against a widely used PyTorch DML re-implementation, AberHu/Knowledge-Distillation-Zoo
(``train_dml.py``, ``kd_losses/dml.py``) at the commit in the fixture's meta (Zhang et al. published no PyTorch code).

The reference's two ResNet-20 (``network.py``, weights made by ``rule_weights``) are mapped by name into a ``dml``
cohort of two peerkd ``resnet20`` with the reference's setting (T = 1, ``kl_weight`` = its ``lambda_kd`` = 1); one
step on the same batch gives each network's cross-entropy and KL to the other's detached softmax, and the gradient of
every parameter of both networks (the reference updates them with two optimisers after two backward passes; each
loss reaches only its own network, so peerkd's one backward of the sum gives the same gradients). Tolerance:
``fixture.RTOL`` (1e-5 of the largest |value|; of the norm for a projected gradient). Regenerate with
``python tools/golden/dml.py --repo PATH``.
"""
from __future__ import annotations

import re

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from tests.golden import fixture
from tests.golden.network_check import assert_gradients
from tests.golden.rule_weights import rule_weights
from tests.helpers import build

GOLDEN = fixture.load("dml_step")
CASE = GOLDEN.meta["case"]
# Knowledge-Distillation-Zoo network.py resnet20 -> peerkd resnet20 (resN.b -> stages.N-1.b, ds -> shortcut)
NAME_RULES = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^fc\.", "head.fc."),
              (r"^res(\d)\.(\d+)\.ds\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
              (r"^res(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.")]


def peerkd_name(reference: str) -> str:
    for pattern, replacement in NAME_RULES:
        renamed = re.sub(pattern, replacement, reference)
        if renamed != reference:
            return renamed
    raise AssertionError(f"no peerkd name for the reference's {reference}")


def dml_with_reference_weights(**options):
    tree = {"name": "dml", "models": ["resnet20", "resnet20"], "temperature": CASE["temperature"],
            "kl_weight": CASE["lambda_kd"], **options}
    method = build(tree, TaskInfo(num_classes=10, num_train=64))
    names, state = {}, {}
    for i, tag in enumerate(("net1", "net2")):
        weights = rule_weights({f"{tag}.{k}": s for k, s in CASE["shapes"]})
        for ref, value in weights.items():
            names[ref] = f"models.{i}.{peerkd_name(ref[len(tag) + 1:])}"
            state[names[ref]] = value
    method.load_state_dict(state, strict=True)
    return method, names


def step(method, names):
    method.train()
    out = method(Batch(x=GOLDEN["batch/x"], y=GOLDEN["batch/y"], index=torch.arange(4)))
    out.loss.backward()
    params = dict(method.named_parameters())
    return out, {ref: params[ours].grad for ref, ours in names.items() if ours in params}


def test_step_equals_the_reference():
    out, grads = step(*dml_with_reference_weights())
    for i in (1, 2):
        fixture.assert_close(out.logs[f"ce{i - 1}"].reshape(1), GOLDEN[f"loss/ce{i}"], f"net{i} cross-entropy")
        fixture.assert_close(out.logs[f"kl{i - 1}"].reshape(1), GOLDEN[f"loss/kl{i}"], f"net{i} KL")
    total = sum(GOLDEN[f"loss/{k}{i}"] for k in ("ce", "kl") for i in (1, 2))
    fixture.assert_close(out.loss.reshape(1), total, "total loss")
    assert_gradients(grads, CASE["gradient_names"], GOLDEN["state/grad_projection/step"], "gradient")


def test_the_tables_temperature_is_not_the_references():
    """peerkd's default T = 3 (the online-KD tables' DML) is another setting than the re-implementation's T = 1."""
    out, _ = step(*dml_with_reference_weights(temperature=3.0))
    with pytest.raises(AssertionError):
        fixture.assert_close(out.logs["kl0"].reshape(1), GOLDEN["loss/kl1"], "net1 KL")
