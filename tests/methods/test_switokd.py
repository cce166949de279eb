"""SwitOKD (peerkd.methods.switokd): the threshold, the mode and the losses against the code's formulas written out
here (hfutqian/SwitOKD main.py ``train``), the multi-network weights, the step's pause and per-network rate, the
state in buffers, the refusals, and a short run on real CIFAR-100."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.data import Batch
from peerkd.training.step import FastStep
from tests.helpers import build, cifar100_subset_run, tiny_task

K = 5


# Tiny networks gain nothing from a second thread on a busy 2-core machine but waiting.
from tests.helpers import one_torch_thread  # noqa: E402,F401  (autouse, module scope)


def method(topology="1T1S", models=None, **options):
    models = models or ["resnet8"] * (2 if topology == "1T1S" else 3)
    return build({"name": "switokd", "topology": topology, "models": models, "lr_scales": [], **options},
                 tiny_task(num_classes=K))


def with_logits(m, logits):
    """``m`` whose networks return ``logits`` (leaf tensors with gradients), to steer the mode."""
    leaves = [z.clone().requires_grad_(True) for z in logits]
    m.models.run = lambda x: leaves
    return leaves


def batch(y):
    return Batch(x=torch.zeros(len(y), 3, 32, 32), y=torch.tensor(y), index=torch.arange(len(y)))


# ---- the code's formulas, written out again (main.py dist_s_label, dist_s_t, kl_div, the if)

def code_distance_to_label(z, y):
    return (F.softmax(z, -1) - F.one_hot(y, z.shape[-1]).float()).abs().sum(1).mean()


def code_kl(p_logit, q_logit):  # KL(softmax(p) || softmax(q)), T = 1, batch mean
    p = F.softmax(p_logit, -1)
    return (p * (F.log_softmax(p_logit, -1) - F.log_softmax(q_logit, -1))).sum(1).mean()


def code_pair(zt, zs, y):
    s_label, t_label = code_distance_to_label(zs, y), code_distance_to_label(zt, y)
    ps_pt = (F.softmax(zt, -1) - F.softmax(zs, -1)).abs().sum(1).mean()
    delta = s_label - math.exp(-(t_label / (t_label + s_label))) * t_label
    return delta, ps_pt, bool(ps_pt > delta and t_label < s_label)


CONFIDENT_TEACHER = torch.tensor([[3.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0]])
WRONG_STUDENT = torch.tensor([[0, 0, 0, 0, 8.0], [0, 0, 0, 8.0, 0]])
Y = [0, 1]


@pytest.mark.parametrize("student, expert", [(WRONG_STUDENT, True), (torch.zeros(2, K), False),
                                             (CONFIDENT_TEACHER * 1.5, False)])
def test_1t1s_threshold_mode_and_losses_are_the_codes(student, expert):
    m = method()
    zt, zs = with_logits(m, [CONFIDENT_TEACHER, student])
    out = m(batch(Y))
    y = torch.tensor(Y)
    delta, gap, code_expert = code_pair(zt.detach(), zs.detach(), y)
    assert code_expert == expert
    assert m.threshold.item() == pytest.approx(delta.item(), rel=1e-6)
    assert m.gap.item() == pytest.approx(gap.item(), rel=1e-6)
    assert m.learning.item() == (0.0 if expert else 1.0)
    student_loss = F.cross_entropy(zs, y) + code_kl(zt.detach(), zs)
    teacher_loss = F.cross_entropy(zt, y) + code_kl(zs.detach(), zt)
    expected = student_loss + (0.0 if expert else teacher_loss)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert (zt.grad.abs().sum() == 0) == expert  # a paused teacher gets no gradient
    assert m.update_scale.tolist() == [0.0 if expert else 1.0, 1.0]


def test_a_temperature_is_not_the_codes():
    """The code divides the gap's and the KL's logits by 1: T = 4 gives another gap and loss."""
    y = torch.tensor(Y)
    m = method(temperature=4.0)
    zt, zs = with_logits(m, [CONFIDENT_TEACHER, WRONG_STUDENT])
    out = m(batch(Y))
    _, gap, _ = code_pair(zt.detach(), zs.detach(), y)
    assert abs(m.gap.item() - gap.item()) > 0.1
    code_loss = F.cross_entropy(zs, y) + code_kl(zt.detach(), zs)
    assert abs(out.loss.item() - code_loss.item()) > 0.1


def test_1t2s_masks_the_teachers_terms_pair_by_pair():
    """Teacher 0, students 1 and 2: student 2 confidently wrong (its pair in expert mode), student 1 as right as the
    teacher (learning mode): the teacher keeps CE and KL to student 1 and drops KL to student 2; it always steps."""
    m = method("1T2S")
    zt, z1, z2 = with_logits(m, [CONFIDENT_TEACHER, CONFIDENT_TEACHER * 1.5, WRONG_STUDENT])
    out = m(batch(Y))
    y = torch.tensor(Y)
    d2, g2, e2 = code_pair(zt.detach(), z2.detach(), y)
    assert e2 and not code_pair(zt.detach(), z1.detach(), y)[2]
    assert m.learning.tolist() == [0.0, 1.0] and m.threshold[0].item() == pytest.approx(d2.item(), rel=1e-6)
    teacher = F.cross_entropy(zt, y) + code_kl(z1.detach(), zt)
    s1 = F.cross_entropy(z1, y) + code_kl(z2.detach(), z1) + code_kl(zt.detach(), z1)
    s2 = F.cross_entropy(z2, y) + code_kl(z1.detach(), z2) + code_kl(zt.detach(), z2)
    assert out.loss.item() == pytest.approx((teacher + s1 + s2).item(), rel=1e-6)
    assert m.update_scale.tolist() == [1.0, 1.0, 1.0]


def test_1t2s_shared_epsilon_is_the_first_pairs():
    """The code's second pair (teacher, student 1) uses epsilon from the first pair's distances."""
    y = torch.tensor(Y)
    logits = [CONFIDENT_TEACHER, torch.zeros(2, K), WRONG_STUDENT]
    shared, own = method("1T2S"), method("1T2S", shared_epsilon=False)
    for m in (shared, own):
        with_logits(m, logits)
        m(batch(Y))
    d = [code_distance_to_label(z, y) for z in logits]
    eps_first = math.exp(-(d[0] / (d[0] + d[2])))
    assert shared.threshold[1].item() == pytest.approx((d[1] - eps_first * d[0]).item(), rel=1e-6)
    assert own.threshold[1].item() == pytest.approx(code_pair(logits[0], logits[1], y)[0].item(), rel=1e-6)
    assert abs(shared.threshold[1].item() - own.threshold[1].item()) > 1e-3


def test_2t1s_pauses_each_teacher_in_its_own_expert_mode():
    m = method("2T1S", lr_scales=[1.0, 1.0, 0.1])
    with_logits(m, [CONFIDENT_TEACHER, WRONG_STUDENT * 1.5, WRONG_STUDENT])  # teacher 2 worse than the student
    m(batch(Y))
    assert m.learning.tolist() == [0.0, 1.0]
    assert m.update_scale.tolist() == pytest.approx([0.0, 1.0, 0.1])


def test_the_step_skips_a_paused_teacher_and_scales_the_students_rate():
    """Two steps of peerkd's FastStep with ``update_scales`` equal two torch SGDs (teacher lr, student lr x 0.1) with
    the teacher's step skipped where the method paused it: momentum and weight decay included."""
    torch.manual_seed(0)
    m = method(lr_scales=[1.0, 0.1])
    twin = copy.deepcopy(m)
    step = FastStep(m, m.trainable_parameters(), lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                    update_scales=m.update_scales())
    optimizers = [torch.optim.SGD(twin.models[i].parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
                  for i, lr in enumerate((0.1, 0.01))]
    modes = [0.0, 1.0]
    for learning in modes:  # force the mode: paused first (its buffer not yet made), then learning
        for net in (m, twin):
            net._switch = lambda logits, y, mode=learning: torch.full((1,), mode)
        data = Batch(x=torch.randn(4, 3, 32, 32), y=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
        step(data)
        for opt in optimizers:
            opt.zero_grad()
        twin(data).loss.backward()
        if learning:
            optimizers[0].step()
        optimizers[1].step()
    for (name, a), b in zip(m.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7), name


def test_state_is_in_buffers_and_checkpoints_restore_it():
    m = method()
    with_logits(m, [CONFIDENT_TEACHER, WRONG_STUDENT])
    m(batch(Y))
    state = m.state_dict()
    for key in ("threshold", "gap", "learning", "update_scale", "lr_scale"):
        assert key in state
    fresh = method()
    fresh.load_state_dict(state)
    assert fresh.learning.tolist() == [0.0] and fresh.threshold.item() == m.threshold.item()


@pytest.mark.parametrize("options, message", [({"topology": "1T2S", "models": ["resnet8"] * 2}, "3 networks"),
                                              ({"lr_scales": [1.0]}, "lr_scales"),
                                              ({"temperature": 0.0}, "temperature")])
def test_bad_settings_are_refused(options, message):
    tree = {"name": "switokd", "models": ["resnet8"] * 2, **options}
    with pytest.raises(ConfigError, match=message):
        build(tree, tiny_task(num_classes=K))


def test_short_run_on_cifar100_scores_teacher_and_student(tmp_path):
    summary = cifar100_subset_run({"name": "switokd", "models": ["resnet8", "resnet8"], "lr_scales": [1.0, 0.1]},
                                  tmp_path / "run")
    for key in ("teacher", "student"):
        assert 0.0 <= summary["keys"][key]["last"]["top1"] <= 100.0, summary


@pytest.mark.parametrize("topology", ["1T1S", "1T2S", "2T1S"])
def test_forward_reads_nothing_back_to_the_host(topology, monkeypatch):
    """The mode switch is tensor arithmetic: a forward that called ``.item()``, ``bool()``, ``float()`` or
    ``.tolist()`` on a tensor (a host synchronisation on a GPU) fails here."""
    m = method(topology)
    with_logits(m, [CONFIDENT_TEACHER, WRONG_STUDENT, torch.zeros(2, K)][:len(m.models)])

    def refuse(*args, **kwargs):
        raise AssertionError("host read in forward")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    out = m(batch(Y))
    monkeypatch.undo()
    assert out.loss.dim() == 0
