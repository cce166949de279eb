"""ONE: the gate's weights form a distribution and give the ensemble it claims; the loss; one step; export; a run."""
import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def test_gate_weights_sum_to_one_and_weight_the_branch_logits():
    task = tiny_task()
    method = build({"name": "one", "model": "resnet8", "branches": 3}, task).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = method.group(x)
        weights = method.gate.weights(out, [0, 1, 2])
        # by hand: pool the trunk's map, FC, BN (running stats in eval), ReLU, softmax
        pooled = out.trunk.mean(dim=(2, 3))
        bn = method.gate.bn
        scores = pooled @ method.gate.fc.weight.t() + method.gate.fc.bias
        scores = (scores - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected_weights = torch.softmax(torch.clamp(scores, min=0), dim=-1)
        expected_ensemble = sum(expected_weights[:, i:i + 1] * out.logits[i] for i in range(3))
        preds = method.predict(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(preds["ensemble"], expected_ensemble, rtol=1e-5, atol=1e-5)
    assert set(preds) == {"branch0", "branch1", "branch2", "ensemble"}


def test_one_loss_is_ce_of_branches_and_ensemble_plus_kl_to_the_gated_teacher():
    task = tiny_task()
    method = build({"name": "one", "model": "resnet8", "branches": 3}, task).eval()  # eval: deterministic BN
    method.on_epoch_start(20, 300)  # ONE's code ramps the KL weight over 80 epochs: w(20) = exp(-5 (1 - 20/80)^2)
    w = torch.exp(torch.tensor(-5.0 * (1 - 20 / 80) ** 2))
    batch = random_batch(task)
    with torch.no_grad():
        loss = method(batch).loss
        out = method.group(batch.x)
        z = out.logits
        g = method.gate.weights(out, [0, 1, 2])
        ensemble = sum(g[:, i:i + 1] * z[i] for i in range(3))
        t = 3.0
        p_teacher = F.softmax(ensemble / t, -1)
        kl = sum((p_teacher * (p_teacher.log() - F.log_softmax(zi / t, -1))).sum(-1).mean() * t * t for zi in z)
        expected = sum(F.cross_entropy(zi, batch.y) for zi in z) + F.cross_entropy(ensemble, batch.y) + w * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    method.on_epoch_start(80, 300)  # the ramp-up is over: weight 1
    with torch.no_grad():
        expected_full = expected + (1 - w) * kl
        torch.testing.assert_close(method(batch).loss, expected_full, rtol=1e-5, atol=1e-5)


def test_one_step_trains_every_parameter_and_export_matches():
    task = tiny_task()
    method = build({"name": "one", "model": "resnet8", "branches": 3}, task)
    assert_one_step(method, random_batch(task))
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    exported = method.export("branch2")
    assert hasattr(exported, "peerkd_spec") and exported.peerkd_spec["name"] == "resnet8"
    with torch.no_grad():
        torch.testing.assert_close(exported(x), method.predict(x)["branch2"])


def test_one_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "one", "model": "resnet8", "branches": 3}, tmp_path / "run", epochs=3,
                        overrides=("data.synthetic.test_size=200",))
    for key in ("branch0", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
    assert "branches_agreement" in summary["diversity"]


def _grads(method, loss):
    params = [p for p in method.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return {n: (g if g is not None else torch.zeros_like(p))
            for (n, p), g in zip([(n, p) for n, p in method.named_parameters() if p.requires_grad], grads)}


def test_one_teacher_is_detached_in_the_kl_as_in_the_published_code():
    # ONE's KLLoss: target = softmax(z_e / T).data (requires_grad=False). So the gradient of the loss equals that of
    # sum_i CE(z_i) + CE(z_e) + T^2 sum_i KL(stop_grad(p_e) || p_i), and the gate learns from CE(z_e) alone.
    torch.manual_seed(0)  # a fixed initialisation: with some, the eval-mode gate's ReLU is dead and its gradient 0
    task = tiny_task()
    method = build({"name": "one", "model": "resnet8", "branches": 3, "rampup_epochs": 0}, task).eval()
    batch = random_batch(task)
    loss = method(batch).loss
    out = method.group(batch.x)
    z = out.logits
    g = method.gate.weights(out, [0, 1, 2])
    ensemble = sum(g[:, i:i + 1] * z[i] for i in range(3))
    t = 3.0
    p_teacher = F.softmax(ensemble / t, -1).detach()
    kl = sum((p_teacher * (p_teacher.log() - F.log_softmax(zi / t, -1))).sum(-1).mean() * t * t for zi in z)
    expected = sum(F.cross_entropy(zi, batch.y) for zi in z) + F.cross_entropy(ensemble, batch.y) + kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    got, want = _grads(method, loss), _grads(method, expected)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # the gate's gradient is that of the ensemble CE alone
    gate_only = _grads(method, F.cross_entropy(ensemble, batch.y))
    assert gate_only["gate.fc.weight"].abs().max() > 0  # a live gate, so the comparisons below can tell things apart
    torch.testing.assert_close(got["gate.fc.weight"], gate_only["gate.fc.weight"], rtol=1e-4, atol=1e-7)
    # the alternative: nothing detached -- the gate then also receives the KL's gradient
    full = build({"name": "one", "model": "resnet8", "branches": 3, "target_gradient": "full", "rampup_epochs": 0},
                 task).eval()
    full.load_state_dict(method.state_dict())
    full_grads = _grads(full, full(batch).loss)
    assert not torch.allclose(full_grads["gate.fc.weight"], gate_only["gate.fc.weight"], rtol=1e-3, atol=1e-7)
