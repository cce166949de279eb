"""OKDDip: attention targets by hand, the two-level loss, one step (both settings), leader export and a run."""
import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def kl_t2(student, teacher, t):
    """T^2 KL(softmax(teacher/T) || softmax(student/T)), batch mean, written out."""
    p = F.softmax(teacher / t, -1)
    return (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t * t


def test_attention_targets_are_peer_specific_weighted_sums():
    task = tiny_task()
    method = build({"name": "okddip", "model": "resnet8"}, task).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = method.group(x)
        from peerkd.methods.parts.multibranch import peer_targets
        targets, weights = peer_targets(method.target_builder, out, [0, 1, 2])
        h = torch.stack(out.features[:3], 1)  # (B, 3, D)
        q = h @ method.target_builder.query.weight.t()
        k = h @ method.target_builder.key.weight.t()
        att = torch.softmax(q @ k.transpose(1, 2), -1)
        z = torch.stack(out.logits[:3], 1)
    assert weights.shape == (3, 3, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 3))
    torch.testing.assert_close(weights, att, rtol=1e-5, atol=1e-6)
    for i in range(3):  # peer i's target: sum_j a_ij z_j
        expected = sum(att[:, i, j:j + 1] * z[:, j] for j in range(3))
        torch.testing.assert_close(targets[:, i], expected, rtol=1e-5, atol=1e-5)


def test_two_level_loss_composition():
    task = tiny_task()
    method = build({"name": "okddip", "model": "resnet8", "peer_weight": 0.7, "leader_weight": 1.3,
                    "rampup_epochs": 10}, task).eval()
    method.on_epoch_start(4, 10)
    scale = torch.exp(torch.tensor(-5.0 * (1 - 4 / 10) ** 2))
    batch = random_batch(task)
    with torch.no_grad():
        loss = method(batch).loss
        out = method.group(batch.x)
        z = out.logits
        from peerkd.methods.parts.multibranch import peer_targets
        targets, _ = peer_targets(method.target_builder, out, [0, 1, 2])
        ce = sum(F.cross_entropy(zi, batch.y) for zi in z)
        first = sum(kl_t2(z[i], targets[:, i], 3.0) for i in range(3))
        second = kl_t2(z[3], (z[0] + z[1] + z[2]) / 3, 3.0)
        expected = ce + scale * (0.7 * first + 1.3 * second)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_okddip_step_branch_and_network_based():
    task = tiny_task()
    for tree in ({"name": "okddip", "model": "resnet8"},
                 {"name": "okddip", "model": "resnet8", "network_based": True, "branches": 3}):
        method = build(tree, task)
        assert_one_step(method, random_batch(task))


def test_okddip_leader_export_gives_the_same_logits():
    task = tiny_task()
    method = build({"name": "okddip", "model": "resnet8"}, task)
    assert_one_step(method, random_batch(task))
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    leader = method.export()
    with torch.no_grad():
        torch.testing.assert_close(leader(x), method.predict(x)["leader"])
    assert set(method.predict(x)) == {"branch0", "branch1", "branch2", "leader", "ensemble"}


def test_okddip_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "okddip", "model": "resnet8"}, tmp_path / "run", epochs=3,
                        overrides=("data.synthetic.test_size=200",))
    for key in ("leader", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary
