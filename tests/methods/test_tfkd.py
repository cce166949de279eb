"""Tf-KD: the virtual teacher distribution, both variants' steps (the self variant from a teacher run), a short run, the
release's KL reduction and the configs that cite it."""
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task
import peerkd
from peerkd.methods.tfkd import virtual_teacher


def test_virtual_teacher_distribution_by_hand():
    a, k, t = 0.9, 4, 2.0
    q = virtual_teacher(torch.tensor([2]), k, a, t)[0]
    other = (1 - a) / (k - 1)
    e_true, e_other = math.exp(a / t), math.exp(other / t)
    denom = e_true + 3 * e_other
    assert q.tolist() == pytest.approx([e_other / denom, e_other / denom, e_true / denom, e_other / denom])
    powered = virtual_teacher(torch.tensor([0]), k, a, t, softening="power")[0]
    s = a ** 0.5 + 3 * other ** 0.5
    assert powered.tolist() == pytest.approx([a ** 0.5 / s] + [other ** 0.5 / s] * 3)


def test_reg_step_and_loss_by_hand():
    task = tiny_task()
    method = build({"name": "tfkd", "model": "resnet8", "correct_prob": 0.9, "temperature": 2.0, "alpha": 0.3,
                    "soften_student": False}, task)  # the released implementation's unsoftened student
    batch = random_batch(task)
    assert_one_step(method, batch)
    method.eval()
    z = method.models[0](batch.x)
    q = virtual_teacher(batch.y, task.num_classes, 0.9, 2.0)
    kl = (q * (q.log() - torch.log_softmax(z, -1))).sum(-1).mean()
    expected = 0.7 * torch.nn.functional.cross_entropy(z, batch.y) + 0.3 * kl
    assert float(method(batch).loss) == pytest.approx(float(expected), rel=1e-5)


def test_self_variant_loads_its_teacher_from_a_run(tmp_path):
    short_run({"name": "vanilla", "models": ["resnet8"]}, tmp_path / "teacher", epochs=1, train_size=64,
              overrides=("data.synthetic.test_size=32", "data.synthetic.num_classes=5"))
    task = tiny_task()
    method = build({"name": "tfkd", "variant": "self", "model": "resnet8", "teacher_run": str(tmp_path / "teacher"),
                    "temperature": 6.0, "alpha": 0.95}, task)
    assert method.options.teacher_model == "resnet8"
    assert_one_step(method, random_batch(task), frozen=("teacher",))
    assert all(p.grad is None for p in method.teacher.parameters())


def test_tfkd_reg_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "tfkd", "model": "resnet8"}, tmp_path / "run", epochs=2, train_size=480,
                        overrides=("data.synthetic.test_size=200",))
    assert summary["keys"]["net"]["last"]["top1"] > 30.0, summary  # chance is 25 % with 4 classes


def test_reg_default_softens_the_student_as_eq_9():
    """Eq. 9: D_KL(p^d_T || p_T) with the student's logits divided by T too (the default)."""
    task = tiny_task()
    method = build({"name": "tfkd", "model": "resnet8", "correct_prob": 0.9, "temperature": 2.0, "alpha": 0.3}, task)
    method.eval()
    batch = random_batch(task)
    z = method.models[0](batch.x)
    k, other = task.num_classes, (1 - 0.9) / (task.num_classes - 1)
    rows = []
    for label in batch.y.tolist():  # the virtual teacher written out: softmax(p^d / T), p^d = a on y, rest uniform
        e = [math.exp((0.9 if c == label else other) / 2.0) for c in range(k)]
        rows.append([v / sum(e) for v in e])
    q = torch.tensor(rows)
    kl = (q * (q.log() - torch.log_softmax(z / 2.0, -1))).sum(-1).mean()
    expected = 0.7 * torch.nn.functional.cross_entropy(z, batch.y) + 0.3 * kl
    assert float(method(batch).loss) == pytest.approx(float(expected), rel=1e-5)


TFKD_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "cutnmix" / "tfkd").glob("*.yaml"))


@pytest.mark.parametrize("path", TFKD_CONFIGS, ids=lambda p: p.stem)
def test_configs_citing_the_release_run_its_scale_and_say_so(path):
    """The CutnMix Tf-KD configs cite the release's CIFAR-100 ResNet-18 params.json: its reduction (element mean),
    multiplier (50 self / 100 reg) and, for reg, its unsoftened student; the header names the reduction."""
    options = peerkd.load_config(path).method.options
    release = {"self": (6.0, 0.95, 50.0, True), "reg": (20.0, 0.1, 100.0, False)}[options.variant]
    assert (options.temperature, options.alpha, options.multiplier, options.soften_student) == release, path
    assert options.kl_reduction == "elementmean", path
    assert "element-mean KL" in path.read_text() and "params.json" in path.read_text(), path


def test_elementmean_is_the_batchmean_over_the_classes():
    """kl_reduction: elementmean divides the teacher term by K (nn.KLDivLoss()'s default mean), so with
    multiplier K it equals batchmean: the setting a config that cites the release needs."""
    task = tiny_task(num_classes=5)
    batch = random_batch(task)
    torch.manual_seed(0)
    element = build({"name": "tfkd", "model": "resnet8", "alpha": 1.0, "kl_reduction": "elementmean",
                     "multiplier": 5.0}, task)
    torch.manual_seed(0)
    per_sample = build({"name": "tfkd", "model": "resnet8", "alpha": 1.0}, task)
    assert torch.allclose(element(batch).loss, per_sample(batch).loss, rtol=1e-5)


def test_unsoftened_virtual_teacher_is_the_smoothed_label():
    """virtual_softening none: p^d itself (Self-KD-Lib's methods/tf_kd_reg.py smoothed labels, epsilon 0.1)."""
    target = virtual_teacher(torch.tensor([2, 0]), 5, 0.9, 20.0, "none")
    expected = torch.full((2, 5), 0.1 / 4)
    expected[0, 2] = expected[1, 0] = 0.9
    assert torch.allclose(target, expected)
