"""CutnMix online distillation: MMD, the peer teacher's gradient paths, one step, ablations, a short run."""
import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def _mixed_batch(task, views=2):
    batch = random_batch(task, batch_size=8, views=views)
    batch.y_b = batch.y.flip(0)
    batch.lam = torch.tensor(0.7)
    return batch


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
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
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
    feats = [m.features_and_logits(batch.view(j))[0].detach() for j, m in enumerate(method.models)]
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


def _by_hand_parts(method, batch, tau=3.0):
    """Every term of eq. 8 for J = 2 written out from the peers' own features and logits (no library loss)."""
    lsm = torch.nn.functional.log_softmax
    feats, logits = zip(*[m.features_and_logits(batch.view(j)) for j, m in enumerate(method.models)])

    def kl(student, teacher):  # tau^2 * mean_i sum_c p_t (log p_t - log p_s), teacher detached
        log_t, log_s = lsm(teacher.detach() / tau, -1), lsm(student / tau, -1)
        return tau * tau * (log_t.exp() * (log_t - log_s)).sum(-1).mean()

    def ce(z):
        per = -lsm(z, -1)
        own, other = per.gather(1, batch.y[:, None]), per.gather(1, batch.y_b[:, None])
        return (batch.lam * own + (1 - batch.lam) * other).mean()

    z_pt = method.peer_teacher(torch.cat([f.detach() for f in feats], 1))
    parts = {"ce_teacher": ce(z_pt)}
    for j, k in ((0, 1), (1, 0)):
        parts[f"ce{j}"] = ce(logits[j])
        parts[f"dml{j}"] = kl(logits[j], logits[k])
        parts[f"mmd{j}"] = ((feats[j].mean(0) - feats[k].detach().mean(0)) ** 2).sum()
        parts[f"pt{j}"] = kl(logits[j], z_pt)
    return parts


def test_every_loss_term_and_the_gradients_match_eq_8_by_hand():
    task = tiny_task()
    method = build({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, task)
    method.eval()  # BatchNorm in eval mode so repeated forwards agree
    batch = _mixed_batch(task)
    out = method(batch)
    parts = _by_hand_parts(method, batch)
    for name, value in parts.items():
        assert float(out.logs[name]) == pytest.approx(float(torch.as_tensor(value).detach()), rel=1e-5, abs=1e-7), name
    # peer j is trained by L^j alone (targets detached), g by its own CE alone
    loss_by_hand = parts["ce_teacher"] + sum(parts[f"ce{j}"] + 0.6 * parts[f"dml{j}"] + 0.3 * parts[f"mmd{j}"]
                                             + 0.1 * parts[f"pt{j}"] for j in range(2))
    grads = torch.autograd.grad(out.loss, list(method.parameters()))
    expected = torch.autograd.grad(loss_by_hand, list(method.parameters()))
    for (name, _), g, e in zip(method.named_parameters(), grads, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6), name


def test_dml_tau_squared_switch():
    task = tiny_task()
    batch = _mixed_batch(task)
    with_t2 = build({"name": "cutnmix", "models": ["resnet8", "resnet8"]}, task).eval()
    without = build({"name": "cutnmix", "models": ["resnet8", "resnet8"], "dml_tau_squared": False}, task).eval()
    without.load_state_dict(with_t2.state_dict())
    a, b = with_t2(batch).logs, without(batch).logs
    assert float(a["dml0"]) == pytest.approx(9.0 * float(b["dml0"]), rel=1e-5)  # tau = 3
    assert float(a["pt0"]) == pytest.approx(float(b["pt0"]), rel=1e-6)  # eq. 10 keeps its own tau^2


def test_backbone_features_and_logits_is_one_forward_pass():
    from peerkd.models import build_model

    net = build_model("resnet8", 5).eval()
    x = torch.randn(2, 3, 32, 32)
    features, logits = net.features_and_logits(x)
    assert torch.allclose(logits, net(x), atol=1e-6)
    assert torch.allclose(features, net.head.features(net.forward_stages(x)[-1]))
