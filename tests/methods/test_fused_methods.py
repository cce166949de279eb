"""Methods built under ``trainer.members: grouped`` (one fused module) compute the same loss, gradients and
predictions as under "separate"; the methods themselves never name the execution."""
from __future__ import annotations

import pytest
import torch

from peerkd.models.members import FusedMembers
from tests.helpers import build, random_batch, tiny_task

IMAGE = 12  # pixels per side: small maps keep the check fast (CIFAR ResNets pool adaptively)
TOLERANCE = 1e-5  # fp32: grouped vs separate convolutions differ only by summation order


def _pair(tree: dict, task):
    """The same method separate and grouped, with the same weights (the grouped one loads the separate state_dict)."""
    torch.manual_seed(0)
    plain = build(tree, task, members="separate")
    fused = build(tree, task, members="grouped")
    assert isinstance(fused.models, FusedMembers) and not isinstance(plain.models, FusedMembers)
    assert set(fused.state_dict()) == set(plain.state_dict())  # the same checkpoint layout
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize("separate_views", [False, True])
def test_dml_fused_gives_the_same_loss_and_gradients(separate_views):
    task = tiny_task(image_size=IMAGE)
    tree = {"name": "dml", "models": ["resnet8", "resnet8"], "separate_views": separate_views}
    plain, fused = _pair(tree, task)
    batch = random_batch(task, batch_size=6, views=2 if separate_views else 1)
    outs = []
    for method in (plain, fused):
        method.train()
        method.zero_grad(set_to_none=True)
        out = method(batch)
        out.loss.backward()
        outs.append(out)
    assert abs(outs[0].loss.item() - outs[1].loss.item()) <= TOLERANCE
    for key in outs[0].logs:
        assert abs(outs[0].logs[key].item() - outs[1].logs[key].item()) <= TOLERANCE, key
    for i, model in enumerate(plain.models):
        grads = fused.models.fused.member_grads(i)
        for name, p in model.named_parameters():
            assert (grads[name] - p.grad).abs().max().item() <= TOLERANCE, f"peer {i} {name}"
    # BN statistics moved identically, so the state_dicts still agree
    fused_state = fused.state_dict()
    for key, value in plain.state_dict().items():
        assert (fused_state[key].float() - value.float()).abs().max().item() <= TOLERANCE, key


def test_fused_predictions_checkpoint_and_export():
    task = tiny_task(image_size=IMAGE)
    plain, fused = _pair({"name": "vanilla", "models": ["resnet8"] * 3}, task)
    x = torch.randn(5, 3, IMAGE, IMAGE)
    plain.eval()
    fused.eval()
    with torch.no_grad():
        expected, got = plain.predict(x), fused.predict(x)
    assert set(expected) == set(got) == {"peer0", "peer1", "peer2", "ensemble"}
    for key in expected:
        assert (expected[key] - got[key]).abs().max().item() <= TOLERANCE, key
    # a fused checkpoint loads into an unfused method, and export gives the same plain model either way
    again = build({"name": "vanilla", "models": ["resnet8"] * 3}, task)
    again.load_state_dict(fused.state_dict())
    for key in ("peer0", "peer2"):
        exported, reference = fused.export(key), plain.export(key)
        assert type(exported) is type(reference)
        for name, value in reference.state_dict().items():
            assert torch.equal(exported.state_dict()[name], value), name
            assert torch.equal(again.export(key).state_dict()[name], value), name


def test_heterogeneous_cohort_runs_separately():
    task = tiny_task(image_size=IMAGE)
    with pytest.warns(UserWarning, match="trainer.members grouped: .* not identical; it runs separately"):
        method = build({"name": "dml", "models": ["resnet8", "resnet14"]}, task, members="grouped")
    assert not isinstance(method.models, FusedMembers)
    method(random_batch(task, batch_size=4)).loss.backward()
