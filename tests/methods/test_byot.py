"""BYOT: the loss against its formula written out here, the detached teacher, classifiers, ensemble and export."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def _kl(teacher_logits, student_logits, t):
    p = F.softmax(teacher_logits / t, -1)
    return (p * (torch.log(p) - F.log_softmax(student_logits / t, -1))).sum(-1).mean() * t * t


def _byot_reference(logits, features, y, a, lam, t, blocks):
    """sum_i (1 - a) CE(z_i, y) + [i in blocks] (a T^2 KL(P_N^T || P_i^T) + lam ||f_i - f_N||^2), KL/hint 0 at N."""
    total = 0.0
    n = len(logits)
    for i in range(1, n + 1):
        total = total + (1 - a) * F.cross_entropy(logits[i - 1], y)
        if i < n and i in blocks:
            total = total + a * _kl(logits[-1], logits[i - 1], t)
            total = total + lam * ((features[i - 1] - features[-1]) ** 2).sum(1).mean()
    return total


@pytest.mark.parametrize("distil_blocks", [[], [2]])
def test_byot_loss_matches_the_formula(distil_blocks):
    task = tiny_task()
    method = build({"name": "byot", "model": "resnet8", "distil_blocks": distil_blocks}, task)  # 3 stages
    method.train()
    batch = random_batch(task)
    with torch.no_grad():
        logits, features = method.net(batch.x)
    assert len(logits) == 3 and all(f.shape == features[-1].shape for f in features)
    blocks = distil_blocks or [1, 2]
    expected = _byot_reference(logits, features, batch.y, 0.3, 0.03, 3.0, blocks)
    out = method(batch)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert ("kl1" in out.logs) == (1 in blocks) and "kl2" in out.logs and "kl3" not in out.logs


def test_deepest_full_ce_switch_gives_the_deepest_plain_cross_entropy():
    # BYOT's released code: CE(z_N, y) with weight 1 on the deepest, (1 - a) CE + a KL + lam hint on the shallow ones
    task = tiny_task()
    method = build({"name": "byot", "model": "resnet8", "deepest_full_ce": True}, task)
    method.train()
    batch = random_batch(task)
    with torch.no_grad():
        logits, features = method.net(batch.x)
    a, lam, t = 0.3, 0.03, 3.0
    expected = F.cross_entropy(logits[2], batch.y)
    for i in (0, 1):
        expected = expected + (1 - a) * F.cross_entropy(logits[i], batch.y) + a * _kl(logits[2], logits[i], t)
        expected = expected + lam * ((features[i] - features[2]) ** 2).sum(1).mean()
    assert float(method(batch).loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_the_deepest_classifier_is_a_detached_teacher():
    # with a = 1 and no hint the CE terms vanish: only the KL to the deepest remains, which must not train its head
    task = tiny_task()
    method = build({"name": "byot", "model": "resnet8", "kl_weight": 1.0, "hint_weight": 0.0}, task)
    method(random_batch(task)).loss.backward()
    deepest_fc = method.net.backbone.head.fc.weight.grad
    assert deepest_fc is None or deepest_fc.abs().sum() == 0
    assert method.net.heads[0].weight.grad.abs().sum() > 0


def test_byot_step_predict_and_export():
    task = tiny_task()
    method = build({"name": "byot", "model": "resnet18", "model_options": {"width": 8}}, task)
    assert_one_step(method, random_batch(task))
    method.eval()
    x = torch.randn(3, 3, 32, 32)
    preds = method.predict(x)
    assert list(preds) == ["classifier1", "classifier2", "classifier3", "classifier4", "ensemble"]
    mean_prob = torch.stack([F.softmax(preds[f"classifier{i}"], -1) for i in range(1, 5)]).mean(0)
    assert torch.allclose(preds["ensemble"].exp(), mean_prob, atol=1e-6)
    assert torch.allclose(method.export()(x), preds["classifier4"], atol=1e-6)
    with pytest.raises(KeyError):
        method.export("classifier2")


def test_byot_rejects_a_deepest_or_missing_distil_block():
    from peerkd.config import ConfigError

    with pytest.raises(ConfigError):
        build({"name": "byot", "model": "resnet8", "distil_blocks": [3]}, tiny_task())


def test_byot_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "byot", "model": "resnet8"}, tmp_path / "run", epochs=3,
                        overrides=("trainer.eval_every=3",))
    assert summary["keys"]["classifier3"]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
