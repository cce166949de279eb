"""DDGSD: two views, the loss by hand, one step, a short run."""
import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def test_two_views_and_one_step():
    task = tiny_task()
    method = build({"name": "ddgsd", "model": "resnet8"}, task)
    assert method.data_request(method.options).views == 2
    assert_one_step(method, random_batch(task, views=2))


def test_loss_by_hand():
    task = tiny_task()
    method = build({"name": "ddgsd", "model": "resnet8"}, task).eval()
    batch = random_batch(task, views=2)
    out = method(batch)
    net = method.models[0]
    f = [net.head.features(net.forward_stages(batch.x[v])[-1]) for v in range(2)]
    z = [net.head.fc(fv) for fv in f]
    ce = sum(torch.nn.functional.cross_entropy(zv, batch.y) for zv in z)
    p = [torch.softmax(zv, -1) for zv in z]
    kl = sum((p[1 - v] * (p[1 - v].log() - p[v].log())).sum(-1).mean() for v in range(2))
    mmd = ((f[0].mean(0) - f[1].mean(0)) ** 2).sum()
    assert float(out.loss.detach()) == pytest.approx(float((ce + kl + mmd).detach()), rel=1e-5)


def test_ddgsd_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "ddgsd", "model": "resnet8"}, tmp_path / "run", epochs=2, train_size=480,
                        overrides=("data.synthetic.test_size=200",))
    assert summary["keys"]["net"]["last"]["top1"] > 30.0, summary  # chance is 25 % with 4 classes


def test_loss_by_hand_with_self_kd_libs_switches():
    """views_forward joint (one batch of both views: shared BN statistics), ce_weight, T, the scalar-mean MMD."""
    task = tiny_task()
    options = {"views_forward": "joint", "ce_weight": 0.25, "temperature": 4.0, "mmd_form": "scalar_mean",
               "mmd_weight": 5e-4}
    method = build({"name": "ddgsd", "model": "resnet8", **options}, task).train()
    batch = random_batch(task, views=2)
    out = method(batch)
    net = method.models[0]
    both = net.head.features(net.forward_stages(torch.cat([batch.x[0], batch.x[1]]))[-1])  # one BN batch of 2B
    f = both.chunk(2)
    z = [net.head.fc(fv) for fv in f]
    ce = sum(torch.nn.functional.cross_entropy(zv, batch.y) for zv in z)
    p = [torch.softmax(zv / 4.0, -1) for zv in z]
    kl = 16.0 * sum((p[1 - v] * (p[1 - v].log() - p[v].log())).sum(-1).mean() for v in range(2))
    mmd = (f[0].mean() - f[1].mean()) ** 2
    expected = 0.25 * ce + kl + 5e-4 * mmd
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    separate = build({"name": "ddgsd", "model": "resnet8", **options, "views_forward": "separate"}, task).train()
    separate.load_state_dict(method.state_dict())
    assert float(separate(batch).loss.detach()) != pytest.approx(float(expected.detach()), rel=1e-5)
