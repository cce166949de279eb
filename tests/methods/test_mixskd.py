"""MixSKD: every term against its formula written out here, the code's readings (the self-teacher and the
discriminators untrained), the in-method mixing draws, any stage model, and a short run on real CIFAR-100."""
import math

import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.data import Batch
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task

SMALL = {"name": "mixskd", "model": "resnet18_mixskd", "model_options": {"blocks": [1, 1, 1, 1], "width": 4}}


def kl_t(student, teacher, t):
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), a batch mean."""
    p = torch.softmax(teacher / t, -1)
    return (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t


def expected_terms(method, x, y, lam, perm, t=3.0):
    """The loss of main_mixskd_cifar.py's train(), written from the paper's pieces (not from peerkd's code)."""
    n = x.shape[0]
    mixed = lam * x + (1 - lam) * x[perm]
    maps = method.backbone.forward_stages(torch.cat([x, mixed]))
    finals = [method.branches[i](maps[i]) for i in range(len(method.branches))] + [maps[-1]]
    logits = [method.branch_heads[i](finals[i]) for i in range(len(method.branches))] + [method.backbone(
        torch.cat([x, mixed]))]
    pair = [lam * f[:n] + (1 - lam) * f[:n][perm] for f in finals]
    mixed_maps = [f[n:] for f in finals]
    teacher = method.self_teacher
    t_pair, t_mixed = teacher(pair), teacher(mixed_maps)
    z_pair = [lam * z[:n] + (1 - lam) * z[:n][perm] for z in logits]
    z_mixed = [z[n:] for z in logits]
    ce = sum(F.cross_entropy(z[:n], y) for z in logits)
    kd = kl_t(z_pair[-1], t_mixed.detach(), t) + kl_t(z_mixed[-1], t_pair.detach(), t)
    kd = kd + sum(kl_t(a, b.detach(), t) + kl_t(b, a.detach(), t) for a, b in zip(z_pair[:-1], z_mixed[:-1]))
    feature = sum(((a - b) ** 2).mean() for a, b in zip(pair, mixed_maps))
    gan = 0.0
    for d, a, b in zip(method.discriminators, pair, mixed_maps):
        scores = d(torch.cat([a, b]))
        target = torch.cat([torch.tensor([[1.0, 0.0]]).expand(n, 2), torch.tensor([[0.0, 1.0]]).expand(n, 2)])
        gan = gan - (target * F.logsigmoid(scores) + (1 - target) * F.logsigmoid(-scores)).mean()
    return {"ce": ce, "kd": kd, "feature": feature, "gan": gan, "loss": ce + kd + feature + gan}


@pytest.fixture(scope="module")
def small_case():
    task = tiny_task()
    torch.manual_seed(0)
    method = build(SMALL, task)
    batch = random_batch(task, batch_size=6)
    return method, batch, torch.tensor(0.3), torch.tensor([2, 0, 1, 5, 3, 4])


def test_every_term_is_the_codes_formula(small_case):
    method, batch, lam, perm = small_case
    method.train()
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    terms = method.loss_terms(batch.x, batch.y, lam, perm)
    method.load_state_dict(state)  # the same BN statistics for the second pass
    expected = expected_terms(method, batch.x, batch.y, lam, perm)
    for key in ("ce", "kd", "feature", "gan", "loss"):
        assert float(terms[key].detach()) == pytest.approx(float(expected[key].detach()), rel=1e-5), key


def test_a_wrong_temperature_fails_the_formula(small_case):
    """The check can fail: T = 4 instead of the code's 3 changes the KL terms."""
    method, batch, lam, perm = small_case
    wrong = build({**SMALL, "temperature": 4.0}, tiny_task())
    wrong.load_state_dict(method.state_dict())
    kd = wrong.loss_terms(batch.x, batch.y, lam, perm)["kd"]
    expected = expected_terms(wrong, batch.x, batch.y, lam, perm)["kd"]
    assert float(kd.detach()) != pytest.approx(float(expected.detach()), rel=1e-3)


def test_the_self_teacher_and_discriminators_stay_untrained_by_default():
    """The code's loss leaves loss_mixcls out (self-teacher without gradient) and its discriminators out of the
    optimizer; mixup_ce_weight = 1 and train_discriminators = True train them."""
    task = tiny_task()
    method = build(SMALL, task)
    trained = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trained for p in method.discriminators.parameters())
    out = method(random_batch(task))
    out.loss.backward()
    assert all(p.grad is None for p in method.self_teacher.parameters())
    assert out.logs["mixce"] > 0  # computed and logged all the same
    both = build({**SMALL, "mixup_ce_weight": 1.0, "train_discriminators": True}, task)
    both(random_batch(task)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in both.self_teacher.parameters())
    assert all(p.grad is not None for p in both.discriminators.parameters())


def test_the_mixing_draws_come_from_the_global_generator():
    """Beta(0.4, 0.4) and a permutation, the same after reseeding (the trainer checkpoints the global generators)."""
    method = build(SMALL, tiny_task())
    torch.manual_seed(3)
    first = method.draw_mixing(8, torch.device("cpu"))
    torch.manual_seed(3)
    again = method.draw_mixing(8, torch.device("cpu"))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert sorted(first[1].tolist()) == list(range(8))
    lams = torch.stack([method.draw_mixing(2, torch.device("cpu"))[0] for _ in range(2000)])
    assert float(lams.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(lams.var()) == pytest.approx(1 / (4 * (2 * 0.4 + 1)), abs=0.02)  # Beta(a, a) variance
    half = build({**SMALL, "mixup_alpha": 0.0}, tiny_task())
    assert float(half.draw_mixing(4, torch.device("cpu"))[0]) == 0.5


def test_any_stage_model_and_the_refusals():
    task = tiny_task()
    method = build({"name": "mixskd", "model": "resnet8"}, task)  # 3 stages: 2 branches
    assert len(method.branches) == 2 and set(method.predict(torch.randn(2, 3, 32, 32))) == {"backbone", "aux1",
                                                                                             "aux2"}
    assert_one_step(method, random_batch(task), frozen=("self_teacher", "discriminators"))
    with pytest.raises(ConfigError, match="2 or more"):
        build({"name": "mixskd", "model": "resnet18", "model_options": {"num_stages": 1}}, task)
    batch = random_batch(task)
    mixed = Batch(x=batch.x, y=batch.y, index=batch.index, y_b=batch.y.roll(1), lam=torch.tensor(0.7))
    with pytest.raises(ConfigError, match="data.mixing"):
        method(mixed)


def test_export_is_the_backbone():
    method = build(SMALL, tiny_task()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.export()(x), method.predict(x)["backbone"])
    with pytest.raises(KeyError):
        method.export("aux1")


def test_mixskd_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run({"name": "mixskd", "model": "resnet8"}, tmp_path / "run")
    assert set(summary["keys"]) == {"backbone", "aux1", "aux2"}
    assert all(math.isfinite(summary["keys"][k]["last"]["top1"]) for k in summary["keys"])


def test_a_resumed_run_draws_the_same_mixing(tmp_path):
    """The draws come from the global generators the checkpoint carries: a run stopped mid-epoch and resumed ends
    with the weights of an uninterrupted one."""
    from peerkd.training.checkpoint import load_run
    from peerkd.training.trainer import Trainer, TrainingInterrupted, train
    from tests.helpers import tiny_config

    def config():
        return tiny_config({"name": "mixskd", "model": "resnet8"}, epochs=2, train_size=64,
                           overrides=("data.synthetic.test_size=64",), trainer={"progress": "off", "threads": 1})

    straight = train(config(), run_dir=tmp_path / "straight")

    def stop_mid_epoch(trainer):
        if trainer.global_step == 3:  # epoch 1 (2 steps an epoch), after its first step
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted):
        Trainer(config(), run_dir=tmp_path / "cut", on_step=stop_mid_epoch).fit()
    resumed = Trainer(config(), run_dir=tmp_path / "cut", resume=True).fit()
    assert resumed["keys"] == straight["keys"]
    a, b = (load_run(tmp_path / name).method.state_dict() for name in ("straight", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
