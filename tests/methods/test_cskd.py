"""CS-KD: the class-pair target and its gradient, one step, a short run."""
import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def _paired_batch(task):
    batch = random_batch(task, batch_size=8)
    batch.pair_x = torch.randn_like(batch.x)
    batch.pair_index = (batch.index + 1) % task.num_train
    return batch


def test_requests_class_pairs_and_one_step_trains_the_network():
    task = tiny_task()
    method = build({"name": "cskd", "model": "resnet8"}, task)
    assert method.data_request(method.options).class_pairs
    assert_one_step(method, _paired_batch(task))


def test_loss_is_ce_plus_t2_kl_to_the_pairs_prediction():
    task = tiny_task()
    method = build({"name": "cskd", "model": "resnet8"}, task).eval()
    batch = _paired_batch(task)
    out = method(batch)
    z, zp = method.models[0](batch.x), method.models[0](batch.pair_x)
    t = 4.0
    p_pair = torch.softmax(zp / t, -1)
    kl = (p_pair * (p_pair.log() - torch.log_softmax(z / t, -1))).sum(-1).mean() * t * t
    expected = torch.nn.functional.cross_entropy(z, batch.y) + kl
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_cskd_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "cskd", "model": "resnet8"}, tmp_path / "run", epochs=2, train_size=480,
                        overrides=("data.synthetic.test_size=200",))
    assert summary["keys"]["net"]["last"]["top1"] > 30.0, summary  # chance is 25 % with 4 classes


def test_the_pair_prediction_is_a_fixed_target():
    """Only CE(x) and the KL's student side train the network: the pair's logits carry no gradient (theta~ fixed)."""
    task = tiny_task()
    method = build({"name": "cskd", "model": "resnet8"}, task).eval()
    batch = _paired_batch(task)
    params = list(method.parameters())
    grads = torch.autograd.grad(method(batch).loss, params)
    net, t = method.models[0], 4.0
    z, zp = net(batch.x), net(batch.pair_x).detach()
    p_pair = torch.softmax(zp / t, -1)
    by_hand = torch.nn.functional.cross_entropy(z, batch.y) + t * t * (
        p_pair * (p_pair.log() - torch.log_softmax(z / t, -1))).sum(-1).mean()
    for g, e in zip(grads, torch.autograd.grad(by_hand, params)):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)
