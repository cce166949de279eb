"""KDCL and CutnMix built under ``trainer.members: grouped`` (one fused module) or ``streams`` (sequential on CPU) run
with the maths of separate peers: the same loss, logs, gradients on every parameter, BatchNorm statistics and
weights after a step, predictions, exports and checkpoints as under ``separate`` from the same weights."""
from __future__ import annotations

import pytest
import torch

from peerkd.config import ConfigError
from peerkd.methods import EpochContext
from peerkd.methods.parts.cohort import feature_widths, run_cohort, run_cohort_features
from peerkd.models import build_model
from peerkd.models.fused import split_member
from peerkd.models.members import FusedMembers, MemberList, StreamedMembers, build_members
from tests.helpers import build, random_batch, tiny_task

IMAGE = 12  # pixels per side: small maps keep the check fast (CIFAR ResNets pool adaptively)
BATCH = 6  # images per view
TOLERANCE = 1e-5  # fp32: grouped vs separate convolutions differ only by summation order
LEARNING_RATE = 0.1  # of the SGD step that checks the updated weights, per unit of gradient
PEERS = ["resnet8", "resnet8"]
FUSED_PREFIX = "models.fused.body."  # a fused cohort's parameter names (FusedMembers over FusedCopies)

KDCL_CASES = {  # the target rules and their input paths: shared view, ICL views, Cutout (random centres)
    "naive": {"target": "naive", "icl": False},
    "naive_batch_icl": {"target": "naive", "naive_scope": "batch", "icl": True},
    "linear_icl": {"target": "linear", "icl": True},
    "minlogit_cutout": {"target": "minlogit", "icl": False, "cutout": 4},
    "minlogit_icl_cutout": {"target": "minlogit", "icl": True, "cutout": 4},
    "general_icl": {"target": "general", "icl": True, "heldout_per_class": 2},
}
CUTNMIX_CASES = {  # separate views or one, with and without the peer teacher's gradient into the peers' features
    "separate_views": {},
    "one_view_cutmix": {"separate_views": False, "mixing": "cutmix"},
    "teacher_trains_peers": {"teacher_trains_peers": True},
    "no_teacher_no_mmd": {"use_peer_teacher": False, "use_mmd": False},
}


def _tree(name: str, extra: dict) -> dict:
    return dict({"name": name, "models": PEERS}, **extra)


def _views(tree: dict) -> int:
    if tree["name"] == "kdcl":
        return len(tree["models"]) if tree.get("icl", True) else 1
    return len(tree["models"]) if tree.get("separate_views", True) else 1


def _pair(tree: dict, task, members: str = "grouped"):
    """The same method built separate and as ``members``, the second loaded from the first's state_dict."""
    torch.manual_seed(0)
    plain = build(tree, task, members="separate")
    other = build(tree, task, members=members)
    expected_type = FusedMembers if members == "grouped" else StreamedMembers
    assert isinstance(other.models, expected_type) and type(plain.models) is MemberList
    assert set(other.state_dict()) == set(plain.state_dict())  # the same checkpoint layout
    other.load_state_dict(plain.state_dict())
    return plain, other


def _grads_by_member_name(method) -> dict[str, torch.Tensor | None]:
    """Every parameter's gradient under its unfused name (``models.{i}.<name>`` for a fused cohort's parts)."""
    grads = {}
    for name, p in method.named_parameters():
        if name.startswith(FUSED_PREFIX):
            copies = method.models.fused.copies
            for member in range(copies):
                part = None if p.grad is None else split_member(p.grad, member, copies)
                grads[f"models.{member}.{name[len(FUSED_PREFIX):]}"] = part
        else:
            grads[name] = p.grad
    return grads


def _train_step(method, batch):
    """Forward (training mode: BatchNorm statistics move), backward and one SGD step; the step's output."""
    method.train()
    method.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # Cutout draws its centres from the default generator: the same squares for both methods
    out = method(batch)
    out.loss.backward()
    grads = {name: None if g is None else g.clone() for name, g in _grads_by_member_name(method).items()}
    torch.optim.SGD(method.parameters(), lr=LEARNING_RATE).step()
    return out, grads


def _assert_close(expected, got, what: str, tolerance: float) -> None:
    assert (expected.float() - got.float()).abs().max().item() <= tolerance, what


def _assert_same_step(plain, other, batch, tolerance: float = TOLERANCE) -> None:
    """One training step of each gives the same loss, logs, gradients and state (weights, BatchNorm statistics)."""
    (out_plain, grads_plain), (out_other, grads_other) = _train_step(plain, batch), _train_step(other, batch)
    _assert_close(out_plain.loss.detach(), out_other.loss.detach(), "loss", tolerance)
    assert set(out_plain.logs) == set(out_other.logs)
    for key, value in out_plain.logs.items():
        _assert_close(value, out_other.logs[key], f"log {key}", tolerance)
    assert set(grads_plain) == set(grads_other)
    for name, grad in grads_plain.items():
        assert grad is not None and grads_other[name] is not None, f"{name} received no gradient"
        _assert_close(grad, grads_other[name], f"gradient of {name}", tolerance)
    state_other = other.state_dict()
    for key, value in plain.state_dict().items():  # the SGD step's weights, running means / variances, step counts
        _assert_close(value, state_other[key], f"state {key}", tolerance)


def _assert_same_predictions_and_exports(plain, other, task, tolerance: float = TOLERANCE) -> None:
    x = torch.randn(5, 3, task.image_size, task.image_size)
    plain.eval()
    other.eval()
    with torch.no_grad():
        expected, got = plain.predict(x), other.predict(x)
        assert set(expected) == set(got)
        for key in expected:
            _assert_close(expected[key], got[key], f"prediction {key}", tolerance)
        for key in ("peer0", "peer1"):
            exported, reference = other.export(key), plain.export(key)
            assert type(exported) is type(reference) and not exported.training
            assert exported.peerkd_spec == reference.peerkd_spec
            exported_state = exported.state_dict()
            for name, value in reference.state_dict().items():
                _assert_close(value, exported_state[name], f"export {key} {name}", tolerance)
            _assert_close(reference(x), exported(x), f"export {key} output", tolerance)


# ------------------------------------------------------------------------------------------------------------ KDCL

@pytest.mark.parametrize("case", sorted(KDCL_CASES))
def test_kdcl_fused_step_equals_the_unfused_step(case):
    task = tiny_task(image_size=IMAGE)
    tree = _tree("kdcl", KDCL_CASES[case])
    plain, fused = _pair(tree, task)
    batch = random_batch(task, batch_size=BATCH, views=_views(tree))
    _assert_same_step(plain, fused, batch)
    _assert_same_predictions_and_exports(plain, fused, task)


def test_kdcl_general_epoch_hook_gives_the_same_weights_fused():
    task = tiny_task(image_size=IMAGE)
    tree = _tree("kdcl", KDCL_CASES["general_icl"])
    plain, fused = _pair(tree, task)
    heldout = [random_batch(task, batch_size=BATCH, seed=seed) for seed in (1, 2)]
    for method in (plain, fused):
        method.train()  # the hook switches to eval mode for the held-out pass and back
        method.on_epoch_end(EpochContext(0, 1, torch.device("cpu"), heldout=heldout))
        assert method.training
    assert not torch.allclose(plain.general_weights, torch.tensor([0.5, 0.5]))  # the hook did move them
    _assert_close(plain.general_weights, fused.general_weights, "general_weights", TOLERANCE)
    # the covariance behind them, and a step with the new weights
    _assert_close(plain.heldout_covariance(heldout), fused.heldout_covariance(heldout), "covariance", TOLERANCE)
    fused.general_weights.copy_(plain.general_weights)  # equal within tolerance; identical for the step check
    _assert_same_step(plain, fused, random_batch(task, batch_size=BATCH, views=2, seed=3))


@pytest.mark.parametrize("target", ["naive", "minlogit", "general"])
def test_kdcl_three_students_fuse(target):
    task = tiny_task(image_size=IMAGE)
    plain, fused = _pair({"name": "kdcl", "models": ["resnet8"] * 3, "target": target, "icl": True}, task)
    _assert_same_step(plain, fused, random_batch(task, batch_size=BATCH, views=3))


def test_kdcl_three_student_linear_agrees_to_its_solvers_sensitivity():
    """m > 2 Linear keeps, at each of its exponentiated-gradient steps, the best of a ladder of step sizes: a discrete
    choice on a flat optimum, so logits that differ in the last float bits (grouped vs separate convolutions) can
    move the weights alpha by ~1e-4 (1e-6 noise on the logits moves them by up to ~1e-2). The students' logits
    agree to fp32 precision and the loss to second order; the target-dependent terms to the solver's precision."""
    task = tiny_task(image_size=IMAGE)
    plain, fused = _pair({"name": "kdcl", "models": ["resnet8"] * 3, "target": "linear", "icl": True}, task)
    batch = random_batch(task, batch_size=BATCH, views=3)
    (out_plain, _), (out_fused, _) = _train_step(plain, batch), _train_step(fused, batch)
    _assert_close(out_plain.loss.detach(), out_fused.loss.detach(), "loss", 1e-4)
    for key, value in out_plain.logs.items():
        tolerance = TOLERANCE if key.startswith("ce") else 1e-2  # ce: the logits alone; alpha, kl: the solver's
        _assert_close(value, out_fused.logs[key], f"log {key}", tolerance)


# -------------------------------------------------------------------------------------------------------- CutnMix

@pytest.mark.parametrize("case", sorted(CUTNMIX_CASES))
def test_cutnmix_fused_step_equals_the_unfused_step(case):
    task = tiny_task(image_size=IMAGE)
    tree = _tree("cutnmix", CUTNMIX_CASES[case])
    plain, fused = _pair(tree, task)
    assert (fused.peer_teacher is None) == (not tree.get("use_peer_teacher", True))
    batch = random_batch(task, batch_size=BATCH, views=_views(tree))
    _assert_same_step(plain, fused, batch)
    _assert_same_predictions_and_exports(plain, fused, task)


def test_run_cohort_features_matches_every_members_own_pass():
    """The helper's features and logits are ``Backbone.features_and_logits`` of each member, fused or not, for one
    shared input and for one input per member; ``feature_widths`` is each member's classifier input."""
    torch.manual_seed(0)
    members = [build_model("resnet8", 5) for _ in range(3)]
    plain = MemberList(members)
    fused = build_members(members, "grouped")
    assert isinstance(fused, FusedMembers)
    assert feature_widths(fused) == feature_widths(plain) == [m.head.in_features for m in members]
    shared = torch.randn(4, 3, IMAGE, IMAGE)
    per_member = torch.randn(3, 4, 3, IMAGE, IMAGE)
    with torch.no_grad():
        for x in (shared, per_member, list(per_member)):
            expected = [m.features_and_logits(x[i] if not torch.is_tensor(x) or x.dim() == 5 else x)
                        for i, m in enumerate(members)]
            for cohort in (plain, fused):
                got = run_cohort_features(cohort, x)
                logits = run_cohort(cohort, x)
                assert len(got) == 3
                for (f, z), (f_got, z_got), z_alone in zip(expected, got, logits):
                    assert f_got.shape == f.shape and z_got.shape == z.shape
                    _assert_close(f, f_got, "features", TOLERANCE)
                    _assert_close(z, z_got, "logits", TOLERANCE)
                    _assert_close(z, z_alone, "run_cohort logits", TOLERANCE)


# ------------------------------------------------------------------------------------ streams, checkpoints, options

@pytest.mark.parametrize("tree", [_tree("kdcl", KDCL_CASES["minlogit_icl_cutout"]), _tree("cutnmix", {})],
                         ids=["kdcl", "cutnmix"])
def test_streams_on_cpu_equal_separate(tree):
    task = tiny_task(image_size=IMAGE)
    plain, streamed = _pair(tree, task, members="streams")
    batch = random_batch(task, batch_size=BATCH, views=_views(tree))
    _assert_same_step(plain, streamed, batch, tolerance=0.0)  # the same modules one after another: bit for bit
    _assert_same_predictions_and_exports(plain, streamed, task, tolerance=0.0)


@pytest.mark.parametrize("tree", [_tree("kdcl", {"target": "general"}), _tree("cutnmix", {})],
                         ids=["kdcl", "cutnmix"])
def test_grouped_checkpoint_loads_separate_after_training(tree):
    task = tiny_task(image_size=IMAGE)
    plain, fused = _pair(tree, task)
    _train_step(fused, random_batch(task, batch_size=BATCH, views=_views(tree)))
    if tree["name"] == "kdcl":
        fused.general_weights.copy_(torch.tensor([0.25, 0.75]))  # a method buffer outside the cohort travels too
    again = build(tree, task, members="separate")
    again.load_state_dict(fused.state_dict())  # strict: every key of the separate layout is there
    state = fused.state_dict()
    for key, value in again.state_dict().items():
        assert torch.equal(value, state[key]), key
    refused = build(tree, task, members="grouped")
    refused.load_state_dict(again.state_dict())  # and back into a fused method
    _assert_same_predictions_and_exports(again, refused, task)
    _assert_same_predictions_and_exports(again, fused, task)


@pytest.mark.parametrize("members", ["grouped", "streams", "vmap"])
def test_cohort_checkpoint_keys_are_the_module_lists_in_every_execution(members):
    """``models.{i}.<name>`` in every execution: a state_dict saved separate loads (strictly) grouped, streamed or
    vmapped, is saved under the same keys there, and loads back separate unchanged."""
    task = tiny_task(image_size=IMAGE)
    tree = {"name": "dml", "models": PEERS}
    torch.manual_seed(0)
    off = build(tree, task, members="separate")
    member_keys = list(build_model(PEERS[0], task.num_classes).state_dict())
    expected = [f"models.{i}.{key}" for i in range(len(PEERS)) for key in member_keys]
    assert list(off.state_dict()) == expected
    other = build(tree, task, members=members)
    other.load_state_dict(off.state_dict())
    assert list(other.state_dict()) == expected
    back = build(tree, task, members="separate")
    back.load_state_dict(other.state_dict())
    saved, restored = off.state_dict(), back.state_dict()
    for key in expected:
        assert torch.equal(restored[key], saved[key]), key


def test_kdcl_heterogeneous_students_run_separately_with_a_warning():
    task = tiny_task(image_size=IMAGE)
    with pytest.warns(UserWarning, match="not identical; it runs separately"):
        method = build({"name": "kdcl", "models": ["resnet8", "wrn16_1"]}, task, members="grouped")
    assert not isinstance(method.models, FusedMembers)
    method(random_batch(task, batch_size=4, views=2)).loss.backward()


@pytest.mark.parametrize("name", ["kdcl", "cutnmix"])
def test_the_old_fuse_option_is_refused_with_its_new_place(name):
    with pytest.raises(ConfigError, match="^method.fuse moved to trainer.members"):
        build({"name": name, "models": PEERS, "fuse": "on"}, tiny_task(image_size=IMAGE))
