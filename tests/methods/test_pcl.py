"""PCL (Wu & Gong 2021): the EMA update, the ensemble teacher and both distillation terms, one step, a short run."""
import math

import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task
from peerkd.methods.pcl import sigmoid_rampup


def pcl(task, **options):
    tree = {"name": "pcl", "model": "resnet8", "branches": 3}
    tree.update(options)
    return build(tree, task)


def test_ema_update_with_warmup_decay():
    task = tiny_task()
    method = pcl(task, ema_decay=0.9)
    student = [p.detach().clone() for p in method.net.parameters()]
    first = [p.detach().clone() for p in method.mean_net.parameters()]
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(1.0)
    method.update_mean_teacher()  # t = 0: decay min(0.9, 1 - 1/1) = 0, the teacher becomes the student
    for p_mean, p in zip(method.mean_net.parameters(), method.net.parameters()):
        assert torch.equal(p_mean, p)
    method.ema_steps.fill_(5)  # t = 5: decay min(0.9, 1 - 1/6) = 5/6
    before = [p.detach().clone() for p in method.mean_net.parameters()]
    with torch.no_grad():
        for p in method.net.parameters():
            p.mul_(-2.0)
    method.update_mean_teacher()
    decay = 5 / 6
    for old, p_mean, p in zip(before, method.mean_net.parameters(), method.net.parameters()):
        assert torch.allclose(p_mean, decay * old + (1 - decay) * p, atol=1e-6)
    assert int(method.ema_steps) == 6
    assert all(not p.requires_grad for p in method.mean_net.parameters())
    assert any(k.startswith("mean_net.") for k in method.state_dict()) and "ema_steps" in method.state_dict()
    del student, first


def kl_by_hand(teacher_logits, student_logits, t):
    p = F.softmax(teacher_logits / t, -1)
    q = F.softmax(student_logits / t, -1)
    return (p * (p.log() - q.log())).sum(-1).mean() * t * t


def test_ensemble_teacher_and_distillation_terms():
    K, m, t = 4, 3, 3.0
    task = tiny_task(num_classes=K)
    method = pcl(task, branches=m, rampup_epochs=0)
    gen = torch.Generator().manual_seed(0)
    dim = method.ensemble_fc.in_features // m
    feats = [torch.randn(5, dim, generator=gen) for _ in range(m)]
    logits = [torch.randn(5, K, generator=gen) for _ in range(m)]
    mean_logits = [torch.randn(5, K, generator=gen) for _ in range(m)]
    method.peer_outputs = lambda net, views: (logits, feats) if net is method.net else (mean_logits, feats)
    batch = random_batch(task, batch_size=5, views=m)
    out = method(batch)
    W, b = method.ensemble_fc.weight, method.ensemble_fc.bias
    z_e = sum(feats[j] @ W[:, j * dim:(j + 1) * dim].T for j in range(m)) + b  # the classifier over [f_1; ...; f_m]
    y = batch.y
    ce = sum(F.cross_entropy(z, y) for z in logits) + F.cross_entropy(z_e, y)
    pe = sum(kl_by_hand(z_e, z, t) for z in logits)
    pm = sum(sum(kl_by_hand(mean_logits[l], logits[j], t) for l in range(m) if l != j) / (m - 1) for j in range(m))
    assert torch.allclose(out.logs["ce"], ce.detach(), rtol=1e-5)
    assert torch.allclose(out.logs["pe"], pe.detach(), rtol=1e-5)
    assert torch.allclose(out.logs["pm"], pm.detach(), rtol=1e-5)
    assert torch.allclose(out.loss, (ce + pe + pm).detach(), rtol=1e-5)


def test_rampup():
    assert math.isclose(sigmoid_rampup(0, 80), math.exp(-5))
    assert math.isclose(sigmoid_rampup(40, 80), math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(300, 80) == 1.0 and sigmoid_rampup(0, 0) == 1.0
    method = pcl(tiny_task(), rampup_epochs=10)
    method.on_epoch_start(5, 300)
    assert math.isclose(float(method.rampup_weight), math.exp(-5 * 0.25), rel_tol=1e-6)


def test_one_step_trains_peers_and_ensemble_but_not_the_mean_teachers():
    task = tiny_task()
    method = pcl(task)
    assert method.data_request(method.options).views == 3
    assert_one_step(method, random_batch(task, views=3), frozen=("mean_net",))
    assert all(p.grad is None for p in method.mean_net.parameters())
    preds = method.predict(torch.randn(2, 3, 32, 32))
    assert set(preds) == {"branch0", "branch1", "branch2", "ensemble_teacher", "mean_teacher0", "mean_teacher1",
                          "mean_teacher2", "ensemble"}
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(method.export()(x), method.predict(x)["mean_teacher0"], atol=1e-5)


def test_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "pcl", "model": "resnet8", "branches": 2, "ema_decay": 0.9, "rampup_epochs": 1},
                        tmp_path / "run", epochs=3, train_size=800)
    for key in ("branch0", "ensemble_teacher", "mean_teacher0"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
