"""CutnMix online distillation: MMD, the peer teacher's gradient paths, one step, ablations, a short run."""
import pytest
import torch

from helpers import assert_one_step, build, random_batch, short_run, tiny_task
from peerkd.methods.cutnmix import mean_feature_mmd


def _mixed_batch(task, views=2):
    batch = random_batch(task, batch_size=8, views=views)
    batch.y_b = batch.y.flip(0)
    batch.lam = torch.tensor(0.7)
    return batch


def test_mmd_of_tiny_features_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # mean (2, 1)
    g = torch.tensor([[0.0, 1.0], [0.0, 3.0], [3.0, 2.0]])  # mean (1, 2)
    assert float(mean_feature_mmd(f, g)) == pytest.approx((2 - 1) ** 2 + (1 - 2) ** 2)


def test_one_step_trains_peers_and_peer_teacher():
    task = tiny_task()
    method = build({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, task)
    request = method.data_request(method.options)
    assert request.views == 2 and request.mixing == "cutnmix"
    assert_one_step(method, _mixed_batch(task))
    assert set(method.predict(torch.randn(2, 3, 32, 32))) == {"peer0", "peer1", "ensemble", "peer_teacher"}


def test_loss_equals_the_papers_sum():
    task = tiny_task()
    method = build({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, task)
    method.eval()  # BatchNorm in eval mode so repeated forwards agree
    batch = _mixed_batch(task)
    out = method(batch)
    logs = out.logs
    expected = logs["ce_teacher"] + sum(logs[f"ce{j}"] + 0.6 * logs[f"dml{j}"] + 0.3 * logs[f"mmd{j}"]
                                        + 0.1 * logs[f"pt{j}"] for j in range(2))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(logs["mmd0"]) == pytest.approx(float(logs["mmd1"]), rel=1e-5)  # symmetric for two peers


def test_peer_teacher_is_trained_by_its_own_ce_only_and_sends_no_gradient_to_the_peers():
    task = tiny_task()
    method = build({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, task)
    method.train()
    batch = _mixed_batch(task)
    method(batch).loss.backward()
    with_teacher = {n: p.grad.clone() for n, p in method.named_parameters() if n.startswith("models")}
    assert method.peer_teacher.weight.grad.abs().sum() > 0
    method.zero_grad(set_to_none=True)
    # the same loss less the peer teacher's own CE: the peers' gradients do not change, and g gets none
    (method(batch).loss - _teacher_ce(method, batch)).backward()
    for name, p in method.named_parameters():
        if name.startswith("models"):
            assert torch.allclose(p.grad, with_teacher[name], atol=1e-6), name
    assert method.peer_teacher.weight.grad.abs().max() < 1e-6


def _teacher_ce(method, batch):
    """The peer teacher's CE recomputed independently: g on the concatenated (detached) peer features."""
    from peerkd.methods.cutnmix import features_and_logits

    feats = [features_and_logits(m, batch.view(j))[0].detach() for j, m in enumerate(method.models)]
    z = method.peer_teacher(torch.cat(feats, 1))
    ce = torch.nn.functional.cross_entropy
    return (batch.lam * ce(z, batch.y, reduction="none") + (1 - batch.lam) * ce(z, batch.y_b, reduction="none")).mean()


@pytest.mark.parametrize("mmd,teacher", [(False, False), (True, False), (False, True)])
def test_table2_ablations_step(mmd, teacher):
    task = tiny_task()
    method = build({"name": "cutnmix", "models": ["resnet8", "resnet8"], "use_mmd": mmd,
                    "use_peer_teacher": teacher}, task)
    assert (method.peer_teacher is not None) == teacher
    out = method(_mixed_batch(task))
    assert ("mmd0" in out.logs) == mmd and ("pt0" in out.logs) == teacher


def test_cutnmix_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, tmp_path / "run", epochs=2,
                        train_size=480, overrides=("data.synthetic.test_size=200",))
    assert summary["keys"]["ensemble"]["last"]["top1"] > 30.0, summary  # chance is 25 % with 4 classes
