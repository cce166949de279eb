"""DLB (peerkd/methods/dlb.py): the loss against the formula written out here, the first step, the carried logits
(state: a checkpoint round trip), the two forms, settings that must change the loss, and a short real CIFAR-100 run."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.core.method import TaskInfo
from tests.helpers import build, cifar100_subset_run, random_batch

TASK = TaskInfo(num_classes=5, num_train=32)
TREE = {"name": "dlb", "model": "resnet8"}


# One torch thread: batches of 4 on ResNet-8 gain nothing from more on a shared machine.
from tests.helpers import one_torch_thread  # noqa: E402,F401  (autouse, module scope)


def with_previous(batch, previous, valid: float = 1.0):
    batch.prev_x, batch.prev_y, batch.prev_index = previous.x, previous.y, previous.index
    batch.prev_valid = torch.tensor(valid)
    return batch


def batches(n: int = 3):
    """``n`` batches of 4 (two views), each carrying the one before (the first: itself, invalid)."""
    plain = [random_batch(TASK, batch_size=4, views=2, seed=s) for s in range(n)]
    return [with_previous(copy.copy(b), plain[max(i - 1, 0)], 0.0 if i == 0 else 1.0) for i, b in enumerate(plain)]


def written_out(net, batch, carried, alpha, temperature):
    """dlb.py's step as the paper writes it: CE over both batches + alpha T^2 KL(softmax(z_prev/T) || softmax(f/T))."""
    current, previous = net(batch.x[0]), net(batch.prev_x[1])
    ce = F.cross_entropy(torch.cat([previous, current]), torch.cat([batch.prev_y, batch.y]))
    kl = F.kl_div(F.log_softmax(previous / temperature, 1), F.softmax(carried / temperature, 1),
                  reduction="batchmean") * temperature ** 2
    return ce + alpha * kl, current.detach()


@pytest.mark.parametrize("alpha, temperature", [(1.0, 3.0), (0.5, 2.0)])
def test_loss_and_gradients_are_the_formula_over_steps(alpha, temperature):
    torch.manual_seed(0)
    method = build({**TREE, "alpha": alpha, "temperature": temperature}, TASK)
    net = copy.deepcopy(method.model)
    method.train(), net.train()
    carried = None
    for step, batch in enumerate(batches()):
        out = method(batch)
        if step == 0:  # no previous batch: cross-entropy alone (the placeholder forward only moves BN statistics)
            want, carried = F.cross_entropy(net(batch.x[0]), batch.y), net(batch.x[0]).detach()
            net(batch.prev_x[1])  # peerkd's placeholder forward: keeps the BN running statistics in step
        else:
            want, carried_next = written_out(net, batch, carried, alpha, temperature)
            carried = carried_next
        torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.carried_logits, carried, rtol=1e-5, atol=1e-6)
        method.zero_grad(), net.zero_grad()
        out.loss.backward(), want.backward()
        for (name, mine), theirs in zip(method.model.named_parameters(), net.parameters()):
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert float(method.has_previous) == 1.0


def test_a_wrong_temperature_or_weight_changes_the_loss():
    torch.manual_seed(0)
    method = build(TREE, TASK)
    net = copy.deepcopy(method.model)
    first, second = batches(2)
    method(first)
    net(first.x[0]), net(first.prev_x[1])  # the same BN statistics as the method's
    carried = 4 * torch.randn(4, 5, generator=torch.Generator().manual_seed(1))  # peaked targets: the KL matters
    method.carried_logits.copy_(carried)
    out = method(second).loss
    right, _ = written_out(copy.deepcopy(net), second, carried, 1.0, 3.0)
    torch.testing.assert_close(out, right, rtol=1e-5, atol=1e-6)
    for alpha, temperature in ((1.0, 4.0), (2.0, 3.0)):
        wrong, _ = written_out(copy.deepcopy(net), second, carried, alpha, temperature)
        assert not torch.allclose(out, wrong, rtol=1e-4), (alpha, temperature)


def test_the_joint_form_is_one_forward_of_both_halves():
    torch.manual_seed(0)
    method = build({**TREE, "form": "joint"}, TASK)
    net = copy.deepcopy(method.model)
    first, second = batches(2)
    method(first)
    both = net(torch.cat([first.prev_x[1], first.x[0]]))
    out = method(second).loss
    previous, current = net(torch.cat([second.prev_x[1], second.x[0]])).split(4)
    ce = F.cross_entropy(torch.cat([previous, current]), torch.cat([second.prev_y, second.y]))
    kl = F.kl_div(F.log_softmax(previous / 3, 1), F.softmax(both[4:].detach() / 3, 1), reduction="batchmean") * 9
    torch.testing.assert_close(out, ce + kl, rtol=1e-5, atol=1e-6)


def test_the_carried_logits_survive_a_checkpoint_and_a_batch_without_previous_is_refused():
    torch.manual_seed(0)
    method = build(TREE, TASK)
    first, second = batches(2)
    method(first)
    fresh = build(TREE, TaskInfo(num_classes=5, num_train=32, restoring=True))
    assert fresh.carried_logits.shape == (0, 5)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.carried_logits, method.carried_logits) and float(fresh.has_previous) == 1.0
    fresh.model.load_state_dict(method.model.state_dict())
    torch.testing.assert_close(fresh(copy.copy(second)).loss, method(copy.copy(second)).loss)
    assert method._ddp_params_and_buffers_to_ignore == ["carried_logits", "has_previous"]  # each rank its own
    with pytest.raises(ConfigError, match="previous batch"):
        method(random_batch(TASK, batch_size=4, views=2))
    with pytest.raises(ConfigError, match="method.temperature"):
        build({**TREE, "temperature": 0.0}, TASK)


def test_the_step_traces_as_one_graph_with_no_host_sync():
    """After the first (eager) step, dynamo traces the whole step as one graph (``fullgraph``: a ``.item()``, a
    Python branch on a tensor's value or a graph break fails), and it carries the logits as the eager step does."""
    torch.manual_seed(0)
    method = build(TREE, TASK)
    twin = copy.deepcopy(method)
    steps = batches(3)
    method(steps[0]), twin(steps[0])
    traced = torch.compile(method, backend="eager", fullgraph=True)
    for batch in steps[1:]:
        torch.testing.assert_close(traced(batch).loss, twin(batch).loss)
        torch.testing.assert_close(method.carried_logits, twin.carried_logits)


def test_a_short_cifar100_run_trains_and_scores_net(tmp_path):
    summary = cifar100_subset_run({"name": "dlb", "model": "resnet8"}, tmp_path / "run")
    assert summary["method"] == "dlb" and list(summary["keys"]) == ["net"]
    assert 0.0 <= summary["keys"]["net"]["last"]["top1"] <= 100.0
