"""PS-KD + BYOT + DMFL (Chottananurak et al.): DMFL's symmetric KL by hand, the whole loss against eq. 2-3 written
out here, the switches of Table 1, the ablations of Tables 3-4, resume through the trainer, and every config."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import peerkd
from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_config, tiny_task
from peerkd.methods.parts.self_distillation import dmfl_loss, symmetric_kl
from peerkd.training.trainer import Trainer, TrainingInterrupted

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pskd"


def test_dmfl_symmetric_kl_worked_example():
    # f_1 = (1, 0), f_N = (0, 1): p = (s, 1 - s), q = (1 - s, s) with s = e / (1 + e);
    # KL(p || q) = KL(q || p) = (2s - 1) * ln(s / (1 - s)) = tanh(1/2) * 1
    f1, f_deep = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(dmfl_loss([f1, f_deep], 1.0, True)) == pytest.approx(2 * math.tanh(0.5), rel=1e-6)
    # a second shallow feature equal to the deepest adds 0; eq. 3 averages over the N - 1 shallow ones
    assert float(dmfl_loss([f1, f_deep.clone(), f_deep], 1.0, True)) == pytest.approx(math.tanh(0.5), rel=1e-6)
    # temperature 2 halves the logits of the mapping: (2s' - 1) ln(s'/(1-s')) with s' = sigmoid(1/2)
    s = 1 / (1 + math.exp(-0.5))
    assert float(dmfl_loss([f1, f_deep], 2.0, True)) == pytest.approx(2 * (2 * s - 1) * math.log(s / (1 - s)))


def test_dmfl_each_direction_trains_its_second_argument():
    shallow = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    deep = torch.tensor([[0.1, 0.4, -0.3]], requires_grad=True)
    log_p, log_q = F.log_softmax(shallow, -1), F.log_softmax(deep, -1)
    symmetric_kl(log_p, log_q, detach_targets=True).backward()
    # reference: KL(q || p) with q fixed trains the shallow side, KL(p || q) with p fixed the deep side
    s2, d2 = shallow.detach().clone().requires_grad_(), deep.detach().clone().requires_grad_()
    q_fixed, p_fixed = F.softmax(deep, -1).detach(), F.softmax(shallow, -1).detach()
    (q_fixed * (q_fixed.log() - F.log_softmax(s2, -1))).sum().backward()
    (p_fixed * (p_fixed.log() - F.log_softmax(d2, -1))).sum().backward()
    assert torch.allclose(shallow.grad, s2.grad, atol=1e-6) and torch.allclose(deep.grad, d2.grad, atol=1e-6)


def _kl(teacher, student, t=1.0):
    p = F.softmax(teacher / t, -1)
    return (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t * t


def test_combined_loss_matches_eq_2_and_3():
    task = tiny_task(num_classes=5, num_train=32)
    method = build({"name": "pskd_ml", "model": "resnet8"}, task)  # 3 stages: N = 3
    method.train()
    batch = random_batch(task)
    stored = F.softmax(torch.randn(len(batch.y), 5, generator=torch.Generator().manual_seed(5)), -1)
    method.memory.write(batch.index, stored)
    method.on_epoch_start(4, 10)  # a_t = 0.8 * 5 / 10
    with torch.no_grad():
        z, f = method.net(batch.x)
    alpha_t, a, lam, t = 0.4, 0.1, 1e-6, 3.0  # T = 3 and a batch-summed hint: the BYOT code's (see pskd_ml.py)
    y_soft = (1 - alpha_t) * torch.eye(5)[batch.y] + alpha_t * stored

    def ce(logits):
        return -(y_soft * F.log_softmax(logits, -1)).sum(-1).mean()

    loss_ce = ce(z[2])
    self_kd = sum((1 - a) * ce(z[i]) + a * _kl(z[2], z[i], t) + lam * ((f[i] - f[2]) ** 2).sum()
                  for i in range(3))  # i = N: KL and hint are 0; the deepest's CE weight is 1 + (1 - a)
    p = [F.softmax(v, -1) for v in f]
    dmfl = sum(((p[i] * (p[i].log() - p[2].log())).sum(-1) + (p[2] * (p[2].log() - p[i].log())).sum(-1)).mean()
               for i in range(2)) / 2
    out = method(batch)
    assert float(out.loss.detach()) == pytest.approx(float(loss_ce + self_kd + dmfl), rel=1e-5)
    assert torch.allclose(method.memory.probs[batch.index], F.softmax(z[2], -1), atol=1e-6)


def test_byot_terms_take_the_scale_of_the_byot_code_that_supplies_a_and_lambda():
    """luanyunteng/pytorch-be-your-own-teacher train.py: --alpha 0.1, --beta 1e-6, --temperature 3, and a hint
    (feature_loss_function) summed over the batch: at batch 128 the hint is 128 x its batch mean."""
    task = tiny_task(num_classes=5, num_train=32)
    options = build({"name": "pskd_ml", "model": "resnet8"}, task).options
    assert (options.kl_weight, options.hint_weight, options.temperature) == (0.1, 1e-6, 3.0)
    assert options.hint_reduction == "sum" and options.self_kd_includes_deepest
    summed = build({"name": "pskd_ml", "model": "resnet8", "pskd": False, "dmfl": False, "kl_weight": 0.0,
                    "hint_weight": 1.0}, task).train()
    averaged = build({"name": "pskd_ml", "model": "resnet8", "pskd": False, "dmfl": False, "kl_weight": 0.0,
                      "hint_weight": 1.0, "hint_reduction": "mean"}, task).train()
    averaged.load_state_dict(summed.state_dict())
    batch = random_batch(task, batch_size=8)
    logs_sum, logs_mean = summed(batch).logs, averaged(batch).logs
    for i in (1, 2):
        assert float(logs_sum[f"hint{i}"]) == pytest.approx(8 * float(logs_mean[f"hint{i}"]), rel=1e-5)


@pytest.mark.parametrize("pskd, byot, dmfl", [(True, False, False), (False, True, False), (False, False, True),
                                              (True, True, False), (True, False, True), (False, True, True),
                                              (True, True, True)])
def test_every_table1_combination_takes_a_step(pskd, byot, dmfl):
    task = tiny_task()
    method = build({"name": "pskd_ml", "model": "resnet8", "pskd": pskd, "byot": byot, "dmfl": dmfl}, task)
    method.on_epoch_start(1, 3)
    assert_one_step(method, random_batch(task))
    keys = list(method.predict(torch.randn(2, 3, 32, 32)))
    assert keys == (["classifier1", "classifier2", "classifier3", "ensemble"] if byot else ["classifier3"])
    assert any(k.startswith("memory.") for k in method.state_dict()) == pskd
    assert (len(method.net.adapters) > 0) == (byot or dmfl)


def test_all_switches_off_is_plain_cross_entropy():
    task = tiny_task()
    method = build({"name": "pskd_ml", "model": "resnet8", "pskd": False, "byot": False, "dmfl": False}, task)
    batch = random_batch(task)
    method.train()
    with torch.no_grad():
        z = method.net.backbone(batch.x)
    assert float(method(batch).loss) == pytest.approx(float(F.cross_entropy(z, batch.y)), rel=1e-5)


def test_table3_and_table4_ablations():
    task = tiny_task()
    method = build({"name": "pskd_ml", "model": "resnet18", "model_options": {"width": 8}, "distil_blocks": [3]},
                   task)
    out = method(random_batch(task))
    assert "kl3" in out.logs and "kl1" not in out.logs and "kl2" not in out.logs and "ce1" in out.logs
    two = build({"name": "pskd_ml", "model": "resnet18", "model_options": {"width": 8, "num_stages": 2}}, task)
    assert_one_step(two, random_batch(task))
    assert list(two.predict(torch.randn(1, 3, 32, 32))) == ["classifier1", "classifier2", "ensemble"]


def test_resume_in_the_middle_of_an_epoch_restores_memory_and_alpha(tmp_path):
    tree = {"name": "pskd_ml", "model": "resnet8", "memory_dtype": "float16"}
    kwargs = dict(epochs=2, train_size=128, overrides=("trainer.log_every=1", "data.synthetic.test_size=100"))
    straight = Trainer(tiny_config(tree, **kwargs), run_dir=tmp_path / "straight")
    straight.fit()

    def stop_mid_epoch(trainer):
        if trainer.epoch == 1 and trainer.step_in_epoch == 2:
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted):
        Trainer(tiny_config(tree, **kwargs), run_dir=tmp_path / "resumed", on_step=stop_mid_epoch).fit()
    resumed = Trainer(tiny_config(tree, **kwargs), run_dir=tmp_path / "resumed", resume=True)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert float(b["alpha"]) == pytest.approx(0.8)
    assert b["memory.written"].all()  # 128 images, 4 full batches of 32 per epoch: every image written
    for key in ("alpha", "memory.probs", "memory.written", "net.backbone.head.fc.weight"):
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_pskd_ml_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "pskd_ml", "model": "resnet8"}, tmp_path / "run", epochs=3,
                        overrides=("trainer.eval_every=3",))
    for key in ("classifier3", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes


def test_every_pskd_config_loads():
    paths = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "kim2021_table1")  # (PS-KD's own table:
    # its code's recipe, tests/configs/test_paper004_configs.py)
    assert len(paths) == 24 + 3 + 3 + 2
    for path in paths:
        config = peerkd.load_config(path)
        assert config.data.normalize == "imagenet" and config.data.batch_size == 128, path
        assert config.optim.nesterov and config.optim.lr == 0.1 and config.optim.weight_decay == 5e-4, path
        assert path.read_text().startswith("# "), path  # the table cell and the paper's number
        if path.parent.name == "table1":
            options, stem = config.method.options, path.stem
            assert config.method.name == "pskd_ml"
            assert options.model in ("resnet18", "resnet50", "resnext50_32x4d")
            assert (options.pskd, options.byot, options.dmfl) == ("pskd" in stem, "byot" in stem, "dmfl" in stem)
    blocks = {p.stem: peerkd.load_config(p).method.options.distil_blocks for p in (CONFIGS / "table3").glob("*.yaml")}
    assert blocks == {"resnet18_blocks123": [1, 2, 3], "resnet18_blocks23": [2, 3], "resnet18_blocks3": [3]}
    stages = {peerkd.load_config(p).method.options.model_options["num_stages"] for p in (CONFIGS / "table4").glob("*")}
    assert stages == {2, 3, 4}
