"""Branched methods run their identical tails (or whole networks) fused, on streams or one after another, with the same
loss, logs, gradients, BatchNorm statistics, predictions, exports and checkpoints (``trainer.members``, set around the
build: the methods never name it)."""
from __future__ import annotations

import pytest
import torch

from peerkd.config import ConfigError
from peerkd.models.branched import BranchTail
from peerkd.models.branched_cohort import BranchedNets, BranchTrunk, FusedBranchedNets
from peerkd.models.members import FusedMembers, MemberList, StreamedMembers
from tests.helpers import build, random_batch, tiny_task

IMAGE = 12  # pixels per side: small maps keep the check fast (CIFAR ResNets pool adaptively)
BATCH = 6  # images per step
TOLERANCE = 1e-5  # fp32: grouped vs separate convolutions differ only by summation order

# every branched method and setting; ramp-ups off so the distillation terms weigh fully in the gradients
CASES = {
    "one": {"name": "one", "model": "resnet8", "rampup_epochs": 0},
    "cl": {"name": "cl", "model": "resnet8"},
    "cl_tree": {"name": "cl", "model": "resnet8", "split_stages": [1, 2], "fanouts": [2, 2]},
    "okddip": {"name": "okddip", "model": "resnet8", "rampup_epochs": 0},
    "okddip_network": {"name": "okddip", "model": "resnet8", "network_based": True, "rampup_epochs": 0},
    "mde": {"name": "mde", "model": "resnet8", "cd_weight": 0.01, "rampup_epochs": 0},
    "css": {"name": "css", "models": ["resnet8", "resnet8"], "branches": 3},
    "css_no_sd": {"name": "css", "models": ["resnet8", "resnet8"], "branches": 3, "sample_diversity": False},
    "css_no_td": {"name": "css", "models": ["resnet8", "resnet8"], "branches": 3, "target_diversity": False},
    "css_no_sd_no_td": {"name": "css", "models": ["resnet8", "resnet8"], "branches": 3, "sample_diversity": False,
                        "target_diversity": False},
    "pcl": {"name": "pcl", "model": "resnet8", "branches": 3, "rampup_epochs": 0},
    "pcl_one_view": {"name": "pcl", "model": "resnet8", "branches": 3, "rampup_epochs": 0, "separate_views": False},
}


def _build(case: str, members: str, task):
    torch.manual_seed(0)  # fusion draws no random numbers: every execution initialises alike from one seed
    return build(CASES[case], task, members=members)


def _groups(method, kind: type) -> list:
    return [m for m in method.modules() if isinstance(m, kind)]


def _batch(method, task):
    views = type(method).data_request(method.options).views
    return random_batch(task, batch_size=BATCH, views=views)


def _step(method, batch):
    method.train()
    method.zero_grad(set_to_none=True)
    out = method(batch)
    out.loss.backward()
    return out


def _grads(method) -> dict[str, torch.Tensor | None]:
    """Every parameter's gradient under its unfused state_dict name: the parameters briefly hold their gradients and
    the state_dict hooks of the fused groups split and rename them as they do the weights."""
    params = dict(method.named_parameters())
    saved = {name: p.data for name, p in params.items()}
    try:
        for p in params.values():
            p.data = p.grad if p.grad is not None else torch.full_like(p, float("nan"))
        state = method.state_dict()
    finally:
        for name, p in params.items():
            p.data = saved[name]
    return {name: None if value.isnan().all() else value for name, value in state.items()}


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= TOLERANCE, f"{what}: max difference {err:.2e}"


def _assert_same_state(got: dict, expected: dict, what: str) -> None:
    assert set(got) == set(expected), f"{what}: keys differ: {sorted(set(got) ^ set(expected))[:4]}"
    for key, value in expected.items():
        _assert_close(got[key], value, f"{what} {key}")


def _assert_same_step(plain, other, batch) -> None:
    """One training step of each: loss, logs, every gradient and the state after it (BatchNorm statistics)."""
    expected, got = _step(plain, batch), _step(other, batch)
    _assert_close(got.loss, expected.loss, "loss")
    assert set(got.logs) == set(expected.logs)
    for key, value in expected.logs.items():
        _assert_close(got.logs[key], value, f"log {key}")
    grads = _grads(other)
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads[name] is None, f"{name}: a gradient where the unfused method has none"
        else:
            assert grads[name] is not None, f"{name}: no gradient"
            _assert_close(grads[name], p.grad, f"grad {name}")
    _assert_same_state(other.state_dict(), plain.state_dict(), "state after the step")


def _assert_same_predictions_and_exports(plain, other) -> None:
    x = torch.randn(5, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    plain.eval()
    other.eval()
    with torch.no_grad():
        expected, got = plain.predict(x), other.predict(x)
    assert set(got) == set(expected)
    for key, value in expected.items():
        _assert_close(got[key], value, f"prediction {key}")
    for key in [None, *expected]:
        try:
            reference = plain.export(key)
        except KeyError:
            continue  # an aggregate, not an exportable model
        exported = other.export(key)
        assert type(exported) is type(reference), key
        assert exported.training == reference.training, key
        _assert_same_state(exported.state_dict(), reference.state_dict(), f"export {key}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_method_equals_unfused(case):
    task = tiny_task(image_size=IMAGE)
    plain, fused = _build(case, "separate", task), _build(case, "grouped", task)
    assert _groups(fused, FusedMembers) and not _groups(plain, FusedMembers)
    # one checkpoint layout, and one initialisation from one seed
    plain_state, fused_state = plain.state_dict(), fused.state_dict()
    assert list(fused_state) == list(plain_state)
    for key, value in plain_state.items():
        assert torch.equal(fused_state[key], value), key
    fused.load_state_dict(plain_state)  # the unfused checkpoint loads into the fused method
    batch = _batch(plain, task)
    _assert_same_step(plain, fused, batch)
    _assert_same_step(plain, fused, batch)  # a second step: from the moved statistics (and, for PCL, the EMA)
    _assert_same_predictions_and_exports(plain, fused)


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_round_trip_between_fused_and_unfused(case):
    task = tiny_task(image_size=IMAGE)
    fused = _build(case, "grouped", task)
    torch.manual_seed(1)  # an unfused method with other weights receives the fused checkpoint
    plain = build(CASES[case], task, members="separate")
    _step(fused, _batch(fused, task))  # non-trivial BatchNorm statistics (and EMA) in the checkpoint
    saved = fused.state_dict()
    plain.load_state_dict(saved)
    again = _build(case, "grouped", task)
    again.load_state_dict(plain.state_dict())  # and back: the unfused checkpoint into a fresh fused method
    for key, value in saved.items():
        assert torch.equal(plain.state_dict()[key], value), key
        assert torch.equal(again.state_dict()[key], value), key
    _assert_same_predictions_and_exports(plain, fused)


@pytest.mark.parametrize("case", sorted(CASES))
def test_streams_on_cpu_equal_separate(case):
    """On a CPU "streams" runs the separate members one after another: exactly "separate"."""
    task = tiny_task(image_size=IMAGE)
    plain, streamed = _build(case, "separate", task), _build(case, "streams", task)
    assert _groups(streamed, StreamedMembers) and not _groups(plain, StreamedMembers)
    batch = _batch(plain, task)
    expected, got = _step(plain, batch), _step(streamed, batch)
    assert torch.equal(got.loss, expected.loss)
    grads = dict(streamed.named_parameters())
    for name, p in plain.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        assert p.grad is None or torch.equal(grads[name].grad, p.grad), name
    for key, value in plain.state_dict().items():
        assert torch.equal(streamed.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["one", "cl", "okddip", "mde", "css", "pcl"])
def test_the_old_fuse_option_is_refused_with_its_new_place(name):
    with pytest.raises(ConfigError, match="^method.fuse moved to trainer.members"):
        build({"name": name, "fuse": "on"}, tiny_task(image_size=IMAGE))


def test_outside_any_member_execution_the_tails_run_separately():
    from peerkd.config import build_config
    from peerkd.core.registry import build_method

    options = build_config({"method": {"name": "one", "model": "resnet8"}}).method.options
    method = build_method("one", options, tiny_task(image_size=IMAGE))
    assert type(method.group.net.branches) is MemberList


def test_tails_fusion_cannot_translate_run_separately_with_a_warning():
    task = tiny_task(image_size=IMAGE)
    with pytest.warns(UserWarning, match="trainer.members grouped: .*run separately"):
        method = build({"name": "one", "model": "resnet8", "model_options": {"shortcut": "A"}}, task,
                       members="grouped")
    assert not _groups(method, FusedMembers)
    _step(method, random_batch(task, batch_size=BATCH))


@pytest.mark.parametrize("case", ["css", "css_no_sd", "css_no_td", "css_no_sd_no_td"])
def test_css_fuses_its_two_identical_networks_as_one_trunk_group_and_one_tail_group(case):
    """Two identical networks under "grouped": ONE fused group of the 2 trunks and ONE of all 2*m tails, nothing
    else."""
    method = _build(case, "grouped", tiny_task(image_size=IMAGE))
    m = CASES[case]["branches"]
    assert type(method.nets) is FusedBranchedNets and len(method.nets) == 2
    groups = _groups(method, FusedMembers)
    assert groups == [method.nets.trunks, method.nets.tails]
    assert len(method.nets.trunks) == 2 and isinstance(method.nets.trunks.fused.body, BranchTrunk)
    assert len(method.nets.tails) == 2 * m and isinstance(method.nets.tails.fused.body, BranchTail)
    assert not _groups(method, MemberList)


@pytest.mark.parametrize("members", ["separate", "streams", "vmap"])
def test_css_keeps_its_networks_separate_unless_grouped(members):
    method = _build("css", members, tiny_task(image_size=IMAGE))
    assert type(method.nets) is BranchedNets and not _groups(method, FusedMembers)


def test_css_different_networks_under_grouped_fuse_their_tails_net_by_net():
    task = tiny_task(image_size=IMAGE)
    tree = {"name": "css", "models": ["resnet8", "resnet14"], "branches": 3}
    torch.manual_seed(0)
    plain = build(tree, task, members="separate")
    torch.manual_seed(0)
    fused = build(tree, task, members="grouped")
    assert type(fused.nets) is BranchedNets
    assert [len(group) for group in _groups(fused, FusedMembers)] == [3, 3]  # each network's own tails
    assert list(fused.state_dict()) == list(plain.state_dict())
    batch = _batch(plain, task)
    _assert_same_step(plain, fused, batch)
    _assert_same_predictions_and_exports(plain, fused)


def test_css_networks_fusion_cannot_translate_run_separately_with_a_warning():
    task = tiny_task(image_size=IMAGE)
    tree = {"name": "css", "models": ["resnet8", "resnet8"], "branches": 2, "model_options": {"shortcut": "A"}}
    with pytest.warns(UserWarning, match="trainer.members grouped: .*run separately"):
        method = build(tree, task, members="grouped")
    assert type(method.nets) is BranchedNets and not _groups(method, FusedMembers)
    _step(method, _batch(method, task))


@pytest.mark.parametrize("case", ["css", "css_no_sd"])
def test_css_fused_cohort_keeps_channels_last_and_equals_unfused(case):
    """In the trainer's CUDA layout (channels-last model and batch) the fused cohort stacks the trunks' and the tails'
    inputs channels-last (no layout conversion before their convolutions) and computes what "separate" computes."""
    task = tiny_task(image_size=IMAGE)
    plain, fused = (_build(case, members, task).to(memory_format=torch.channels_last)
                    for members in ("separate", "grouped"))
    layouts = []
    for group in (fused.nets.trunks, fused.nets.tails):
        group.fused.register_forward_pre_hook(
            lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    batch = _batch(plain, task)
    batch.x = batch.x.contiguous(memory_format=torch.channels_last)
    _assert_same_step(plain, fused, batch)
    assert layouts == [True, True]
