"""CL: consensus targets by hand, backprop rescaling, hierarchical heads, export and a run."""
import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def test_cl_loss_uses_the_mean_of_the_other_heads():
    task = tiny_task()
    method = build({"name": "cl", "model": "resnet8", "fanouts": [3], "hard_weight": 0.4,
                    "temperature": 2.0}, task).eval()
    batch = random_batch(task)
    with torch.no_grad():
        loss = method(batch).loss
        z = method.tree(batch.x)
        t = 2.0
        expected = 0
        for h in range(3):
            others = sum(z[j] for j in range(3) if j != h) / 2
            p = F.softmax(others / t, -1)
            kl = (p * (p.log() - F.log_softmax(z[h] / t, -1))).sum(-1).mean() * t * t
            expected = expected + 0.4 * F.cross_entropy(z[h], batch.y) + 0.6 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_backprop_rescaling_divides_the_shared_gradient_by_the_fanout():
    task = tiny_task()
    batch = random_batch(task)
    grads = {}
    for rescale in (True, False):
        torch.manual_seed(0)
        method = build({"name": "cl", "model": "resnet8", "fanouts": [4], "rescale_gradient": rescale}, task).eval()
        method.zero_grad()
        method(batch).loss.backward()
        grads[rescale] = (method.tree.stem[0].weight.grad.clone(),
                          method.tree.classifiers[0].fc.weight.grad.clone())
    torch.testing.assert_close(grads[True][0], grads[False][0] / 4, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads[True][1], grads[False][1])  # a head's own layers are not rescaled


def test_hierarchical_heads_step_and_export():
    task = tiny_task()
    method = build({"name": "cl", "model": "resnet8", "split_stages": [1, 2], "fanouts": [2, 2]}, task)
    assert len(method.tree.levels[0]) == 2 and len(method.tree.levels[1]) == 4  # stage 2 by pairs, stage 3 each
    assert_one_step(method, random_batch(task))
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        preds = method.predict(x)
        for h in range(4):
            torch.testing.assert_close(method.export(f"head{h}")(x), preds[f"head{h}"])
    assert set(preds) == {"head0", "head1", "head2", "head3", "ensemble"}


def test_cl_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "cl", "model": "resnet8", "fanouts": [3]}, tmp_path / "run", epochs=3,
                        overrides=("data.synthetic.test_size=200",))
    for key in ("head0", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary
