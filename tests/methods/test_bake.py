"""BAKE: the batch knowledge ensemble against its propagation series, the re-softened (code) and plain (paper)
targets, the weights, the fixed target, a real short run."""
import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task


def _batch(task, partners=2, size=4):
    batch = random_batch(task, batch_size=size)
    batch.pair_x = torch.randn(partners * size, *batch.x.shape[1:], generator=torch.Generator().manual_seed(5))
    batch.pair_index = torch.arange(partners * size)
    return batch


def _series_targets(features, logits, omega, t, terms=80):
    """sum_k omega^k A^k P (1 - omega) written as the propagation series, A the self-excluded cosine softmax."""
    f = features / features.norm(dim=1, keepdim=True)
    sim = f @ f.t()
    sim.fill_diagonal_(float("-inf"))
    a = torch.softmax(sim, dim=1)
    p = torch.softmax(logits / t, dim=1)
    total, term = torch.zeros_like(p), p
    for _ in range(terms):
        total, term = total + term, omega * a @ term
    return (1 - omega) * total


def _by_hand(method, batch, omega, t, weight, target):
    net = method.models[0]
    x = torch.cat([batch.x, batch.pair_x])
    y = batch.y.repeat(x.shape[0] // batch.x.shape[0])
    feats, z = net.head.features(net.forward_stages(x)[-1]), net(x)
    q = _series_targets(feats.detach(), z.detach(), omega, t)
    teacher = torch.softmax(q / t, 1) if target == "resoftened" else q
    kl = (teacher * (teacher.log() - torch.log_softmax(z / t, 1))).sum(1).mean() * t * t
    return F.cross_entropy(z, y) + weight * kl, kl


def test_requests_m_partners_and_features_and_one_step_trains():
    task = tiny_task()
    method = build({"name": "bake", "model": "resnet8", "intra_images": 2}, task)
    assert method.data_request(method.options).class_pairs == 2
    assert method.model_requirements(method.options) == {"model": ("features",)}
    assert_one_step(method, _batch(task))


@pytest.mark.parametrize("target", ["resoftened", "ensemble"])
def test_loss_and_gradient_equal_the_formula(target):
    task = tiny_task()
    opts = {"omega": 0.3, "temperature": 2.0, "kd_weight": 1.5, "target": target}
    method = build({"name": "bake", "model": "resnet8", "intra_images": 2, **opts}, task).eval()
    with torch.no_grad():  # logits of a few units, so that the targets and the KL depend on T and the weight
        method.models[0].head.fc.weight.mul_(30.0)
    batch = _batch(task)
    params = list(method.parameters())
    out = method(batch)
    expected, kl = _by_hand(method, batch, 0.3, 2.0, 1.5, target)
    assert float(out.logs["kd"]) == pytest.approx(float(kl.detach()), rel=1e-4, abs=1e-6)  # float32 round-off
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for mine, theirs in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(expected, params)):
        assert (mine - theirs).abs().max() <= 1e-4 * theirs.abs().max() + 1e-7  # round-off of the largest entry
    wrong_t = _by_hand(method, batch, 0.3, 3.0, 1.5, target)[1]  # another T: another KL term
    assert abs(float(wrong_t.detach()) - float(kl.detach())) > 1e-2 * abs(float(kl.detach()))
    wrong_weight = _by_hand(method, batch, 0.3, 2.0, 1.0, target)[0]  # another weight: another loss
    assert abs(float(wrong_weight.detach()) - float(expected.detach())) > 1e-2 * abs(float(kl.detach()))


def test_targets_are_distributions_and_order_equivariant():
    from peerkd.methods.bake import batch_knowledge_ensemble

    gen = torch.Generator().manual_seed(0)
    feats, logits = torch.randn(9, 6, generator=gen), 3 * torch.randn(9, 5, generator=gen)
    q = batch_knowledge_ensemble(feats, logits, 0.5, 4.0)
    torch.testing.assert_close(q.sum(1), torch.ones(9))
    torch.testing.assert_close(q, _series_targets(feats, logits, 0.5, 4.0))
    perm = torch.randperm(9, generator=gen)
    torch.testing.assert_close(batch_knowledge_ensemble(feats[perm], logits[perm], 0.5, 4.0), q[perm])


def test_bad_omega_is_refused():
    with pytest.raises(ConfigError, match="omega"):
        build({"name": "bake", "model": "resnet8", "omega": 1.0}, tiny_task())


def test_bake_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run({"name": "bake", "model": "resnet8", "intra_images": 1}, tmp_path / "run")
    assert set(summary["keys"]) == {"net"} and summary["keys"]["net"]["last"]["top1"] >= 0.0
