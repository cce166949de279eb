"""Fused members (``build_members(modules, "grouped")`` over :class:`FusedCopies`) compute exactly what the separate
modules compute: outputs, gradients, BatchNorm statistics, for whole networks and for the tails of a branched network.

In float64 the two agree to rounding (1e-12). In float32 they agree within 1e-5, with one caveat: grouped and
separate convolutions round differently, so a pre-activation within ~1e-7 of zero can land on the other side of a
ReLU in one of them, changing gradients upstream by a finite amount (the separate fp32 model then differs from its own
float64 twin just as much). So in float32 a fused gradient must equal the separate model's within 1e-5, or, where the
separate fp32 gradient is itself off, the exact (float64) gradient within 1e-5.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peerkd.models import branched, build_model
from peerkd.models.execution import member_execution
from peerkd.models.fused import FusedCopies, FusionError, fuse_module
from peerkd.models.members import FusedMembers, MemberList, build_members

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}  # grouped vs separate convolutions: summation order only
IMAGE = 12  # pixels per side: CIFAR ResNets and WRNs pool adaptively, and small maps keep the test fast and stable


def _cohort(name: str, copies: int, seed: int = 0, num_classes: int = 5, dtype=torch.float32) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [build_model(name, num_classes).to(dtype) for _ in range(copies)]


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tolerance: float | None = None) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    tolerance = TOLERANCE.get(b.dtype, 1e-5) if tolerance is None else tolerance
    assert err <= tolerance, f"{what}: max difference {err:.2e}"


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A different cross-entropy for every member: ``logits (P, B, K)``, ``labels (P, B)``."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")


def _exact_grads(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The member's gradients computed in float64 from its current weights and statistics (the exact values)."""
    twin = copy.deepcopy(model).double()
    twin.zero_grad(set_to_none=True)
    _loss(twin(x.double())[None], labels[None]).backward()
    return {name: p.grad for name, p in twin.named_parameters()}


def _assert_same_members(fused: FusedCopies, models, inputs=None, labels=None) -> None:
    """Every member's parameters, buffers (BN statistics) and gradients equal the separate model's; for float32
    gradients, where they differ, the fused ones must equal the exact float64 ones (see the module docstring).
    ``inputs[i]`` and ``labels[i]`` are member i's step data (for that exact recomputation)."""
    for i, model in enumerate(models):
        state = fused.member_state_dict(i)
        for key, value in model.state_dict().items():
            _close(state[key], value, f"member {i} {key}")
        fused_grads, exact = fused.member_grads(i), None
        for name, p in model.named_parameters():
            assert fused_grads[name] is not None, f"member {i} {name}: no gradient"
            try:
                _close(fused_grads[name], p.grad, f"member {i} grad {name}")
            except AssertionError:
                if p.dtype != torch.float32 or inputs is None:
                    raise
                if exact is None:  # BN statistics already moved this step: they do not change train-mode outputs
                    exact = _exact_grads(model, inputs[i], labels[i])
                _close(fused_grads[name], exact[name], f"member {i} grad {name} (vs exact)", TOLERANCE[p.dtype])


def _fuse(modules: list[nn.Module]) -> FusedMembers:
    group = build_members(modules, "grouped")
    assert isinstance(group, FusedMembers)
    return group


@pytest.mark.parametrize("name,per_member_inputs,dtype", [
    ("resnet8", False, torch.float32), ("resnet8", True, torch.float32), ("wrn16_1", True, torch.float32),
    ("wrn16_1", False, torch.float64)])
def test_fused_cohort_matches_separate_models(name, per_member_inputs, dtype):
    copies, batch = 3, 4
    models = _cohort(name, copies, dtype=dtype)
    fused = _fuse(models)
    gen = torch.Generator().manual_seed(1)
    for mode in ("train", "eval"):
        for m in [*models, fused]:
            m.train(mode == "train")
        for step in range(3):  # several train-mode forwards move the running statistics
            shape = (copies, batch, 3, IMAGE, IMAGE) if per_member_inputs else (batch, 3, IMAGE, IMAGE)
            x = torch.randn(shape, generator=gen).to(dtype)
            labels = torch.randint(0, 5, (copies, batch), generator=gen)
            for m in [*models, fused]:
                m.zero_grad(set_to_none=True)
            separate = torch.stack([m(x[i] if per_member_inputs else x) for i, m in enumerate(models)])
            _loss(separate, labels).backward()
            logits = torch.stack(fused.run(list(x) if per_member_inputs else x))
            _loss(logits, labels).backward()
            _close(logits, separate, f"{mode} step {step} logits")
            _assert_same_members(fused.fused, models, x if per_member_inputs else x.expand(copies, *x.shape), labels)


def test_forward_stages_give_every_members_features():
    """The fused body has the members' methods on stacked channels: every stage's map is the members' maps side by
    side; the group's ``outputs`` are every member's last map, pooled feature and logits."""
    models = _cohort("resnet8", 2)
    fused = _fuse(models).eval()
    x = torch.randn(2, 4, 3, IMAGE, IMAGE)
    with torch.no_grad():
        stages = fused.fused.body.forward_stages(torch.cat(list(x), 1))
        outputs = fused.outputs(list(x))
        for i, model in enumerate(models):
            model.eval()
            for s, feature in enumerate(model.forward_stages(x[i])):
                _close(stages[s].chunk(2, 1)[i], feature, f"stage {s} member {i}")
            features, logits = model.features_and_logits(x[i])
            _close(outputs.maps[i], model.forward_stages(x[i])[-1], f"last map member {i}")
            _close(outputs.features[i], features, f"features member {i}")
            _close(outputs.logits[i], logits, f"logits member {i}")


def test_export_round_trip_is_exact():
    models = _cohort("resnet8", 3)
    for model in models:  # non-trivial BN statistics
        model.train()(torch.randn(4, 3, IMAGE, IMAGE))
    fused = _fuse(models)
    plain = [fused.export(i) for i in range(3)]
    for model, exported in zip(models, plain):
        assert type(exported) is type(model)
        assert exported.peerkd_spec == model.peerkd_spec
        for key, value in model.state_dict().items():
            assert torch.equal(exported.state_dict()[key], value), key
    again = _fuse(plain)
    for key, value in fused.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert list(fused.state_dict()) == list(nn.ModuleList(models).state_dict())  # the ModuleList's keys


def test_heterogeneous_cohorts_are_refused():
    for pair in ([build_model("resnet8", 5), build_model("resnet14", 5)],
                 [build_model("resnet8", 5), build_model("resnet8", 7)],
                 [build_model("resnet8", 5), build_model("wrn16_1", 5)]):
        with pytest.raises(FusionError, match="not identical"):
            FusedCopies(pair)
        with pytest.warns(UserWarning, match="not identical.*run separately"):  # the group falls back to separate
            assert type(build_members(pair, "grouped")) is MemberList


def test_unsupported_modules_are_named():
    with pytest.raises(FusionError, match="LayerNorm"):
        fuse_module([nn.LayerNorm(4), nn.LayerNorm(4)])
    with pytest.raises(FusionError, match="shortcut='A'"):
        FusedCopies([build_model("resnet8", 5, shortcut="A") for _ in range(2)])


def _branched_pair():
    """The same branched net (float64: the exact maths, no ReLU-kink caveat) with separate and fused tails."""
    torch.manual_seed(0)
    net = branched("resnet8", 5, split_at=2, branches=3).double()  # outside any context: separate tails
    with member_execution("grouped"):
        fused = branched("resnet8", 5, split_at=2, branches=3).double()
    assert isinstance(fused.branches, FusedMembers)
    fused.load_state_dict(net.state_dict())
    return net, fused


def test_fused_branch_tails_match_the_branched_net():
    net, fused = _branched_pair()
    gen = torch.Generator().manual_seed(2)
    for mode in ("train", "eval"):
        net.train(mode == "train")
        fused.train(mode == "train")
        for step in range(2):
            x = torch.randn(4, 3, IMAGE, IMAGE, generator=gen).double()
            labels = torch.randint(0, 5, (3, 4), generator=gen)
            net.zero_grad(set_to_none=True)
            fused.zero_grad(set_to_none=True)
            separate = torch.stack(net(x))
            _loss(separate, labels).backward()
            logits = torch.stack(fused(x))
            _loss(logits, labels).backward()
            _close(logits, separate, f"{mode} step {step} logits")
            _assert_same_members(fused.branches.fused, list(net.branches))
            trunk = dict(fused.named_parameters())
            for name, p in net.named_parameters():
                if not name.startswith("branches."):
                    _close(trunk[name].grad, p.grad, f"trunk grad {name}")
    back = branched("resnet8", 5, split_at=2, branches=3).double()
    back.load_state_dict(fused.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    exported = fused.export_branch(1)
    for key, value in net.export_branch(1).state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key


@pytest.mark.parametrize("shared_input", [True, False])
def test_fused_stack_keeps_the_channels_last_layout(shared_input):
    """The trainer runs CUDA in channels-last; a stacked input in the other layout would cost a conversion kernel."""
    torch.manual_seed(0)
    members = [build_model("resnet8", 5).to(memory_format=torch.channels_last) for _ in range(2)]
    plain, fused = build_members(copy.deepcopy(members), "separate"), build_members(members, "grouped")
    x = torch.randn(4, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    inputs = x if shared_input else [x, (x * 2).contiguous(memory_format=torch.channels_last)]
    stacked = fused._stack(inputs)
    assert stacked.is_contiguous(memory_format=torch.channels_last) and not stacked.is_contiguous()
    for got, expected in zip(fused.run(inputs), plain.run(inputs)):
        assert (got - expected).abs().max().item() <= 1e-5
