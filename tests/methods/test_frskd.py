"""FRSKD: the loss written out (two CEs, the KL at T, the attention-transfer term with detached refined maps), its
weights, the KL's gradient into the self-teacher, the BiFPN's shapes on another model, a real short run."""
import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.methods.frskd import same_max_pool
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task

SETTINGS = {"temperature": 2.0, "kd_weight": 1.5, "attention_weight": 30.0}


def _method(**options):
    method = build({"name": "frskd", "model": "resnet8", **options}, tiny_task()).train()
    with torch.no_grad():  # logits of a few units, so that the KL depends on T
        method.models[0].head.fc.weight.mul_(20.0)
    return method


def _by_hand(method, batch, t, kd_weight, attention_weight):
    """The loss from the networks' outputs, every term written out here."""
    net = method.models[0]
    maps = net.forward_stages(batch.x)
    z = net.head(maps[-1])
    refined, teacher_logits = method.teacher(maps)
    p_teacher = torch.softmax(teacher_logits / t, 1)
    kl = (p_teacher * (torch.log_softmax(teacher_logits / t, 1) - torch.log_softmax(z / t, 1))).sum(1).mean() * t * t

    def attention(f):
        a = f.pow(2).mean(1).reshape(f.shape[0], -1)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    at = sum(((attention(f) - attention(r.detach())) ** 2).mean() for f, r in zip(maps, refined))
    return F.cross_entropy(z, batch.y) + F.cross_entropy(teacher_logits, batch.y) + kd_weight * kl + \
        attention_weight * at, kl, at


def test_one_step_trains_classifier_and_self_teacher_and_predicts_both():
    method = _method()
    assert method.model_requirements(method.options) == {"model": ("stages",)}
    assert_one_step(method, random_batch(tiny_task()))
    with torch.no_grad():
        assert set(method.eval().predict(torch.randn(2, 3, 32, 32))) == {"net", "teacher"}


def test_loss_and_gradients_equal_the_formula_and_wrong_settings_differ():
    method = _method(**SETTINGS)
    batch = random_batch(tiny_task())
    params = list(method.parameters())
    torch.manual_seed(0)
    out = method(batch)
    for m in method.modules():  # the same batch statistics on the second forward, running statistics frozen
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    expected, kl, at = _by_hand(method, batch, 2.0, 1.5, 30.0)
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(out.logs["kd"]) == pytest.approx(float(kl.detach()), rel=1e-4)
    assert float(out.logs["attention"]) == pytest.approx(float(at.detach()), rel=1e-4, abs=1e-7)
    for mine, theirs in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(expected, params)):
        assert (mine - theirs).abs().max() <= 1e-4 * theirs.abs().max() + 1e-7  # round-off of the largest entry
    for wrong in ((4.0, 1.5, 30.0), (2.0, 2.0, 30.0), (2.0, 1.5, 100.0)):  # T, KL weight, attention weight
        other = _by_hand(method, batch, *wrong)[0]
        assert abs(float(other.detach()) - float(expected.detach())) > 1e-3 * float(out.logs["attention"] + kl.detach())


def test_kl_trains_the_self_teacher_unless_detached():
    batch = random_batch(tiny_task())
    grads = {}
    for mode in ("both", "student"):
        torch.manual_seed(0)
        method = _method(teacher_gradient=mode)
        method(batch).loss.backward()
        grads[mode] = method.teacher.fc.weight.grad.clone()
    torch.manual_seed(0)
    method = _method()
    maps = method.models[0].forward_stages(batch.x)
    ce_only = torch.autograd.grad(F.cross_entropy(method.teacher(maps)[1], batch.y), method.teacher.fc.weight)[0]
    assert (grads["student"] - ce_only).abs().max() <= 1e-4 * ce_only.abs().max()  # only its CE reaches it
    assert (grads["both"] - ce_only).abs().max() > 1e-3 * ce_only.abs().max()  # the code's KL reaches it too


def test_refined_maps_keep_each_stage_resolution_and_same_pool_halves():
    method = _method()
    maps = method.models[0].forward_stages(torch.randn(2, 3, 32, 32))
    refined, logits = method.teacher(maps)
    assert [r.shape for r in refined] == [torch.Size([2, 2 * m.shape[1], *m.shape[2:]]) for m in maps]
    assert logits.shape == (2, 5)
    assert same_max_pool(torch.randn(1, 1, 8, 8), 2).shape[-2:] == (4, 4)
    assert same_max_pool(torch.randn(1, 1, 7, 7), 2).shape[-2:] == (4, 4)
    assert same_max_pool(torch.randn(1, 1, 8, 8), 1).shape[-2:] == (8, 8)


def test_bad_depths_are_refused():
    with pytest.raises(ConfigError, match="depth"):
        build({"name": "frskd", "model": "resnet8", "depth": [2, 2]}, tiny_task())


def test_frskd_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run({"name": "frskd", "model": "resnet8", "width": 1, "depth": [1, 1, 1]},
                                  tmp_path / "run")
    assert set(summary["keys"]) == {"net", "teacher"}
