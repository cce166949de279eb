"""SwitOKD (``peerkd.methods.switokd``) against its authors' code, hfutqian/SwitOKD at the commit in the fixtures'
meta (``tools/golden/switokd.py`` runs the code's own ``train()``).

- Networks (``switokd_networks``): the CIFAR-100 code's WRN-16-2 (``models/wrnet.py``) as ``wrn16_2_meliketoy``, its
  ``mobile_half`` as ``mobilenetv2_half``, the CIFAR-10 code's WRN-16-1 as ``wrn16_1_meliketoy``, the multi-network
  code's WRN-16-10 and MobileNet (v1) as ``wrn16_10_meliketoy`` and ``mobilenet_cifar``: shapes in order,
  parameter count, training- and evaluation-mode logits, CE gradients.
- Training (``switokd_1t1s``, ``switokd_1t2s``, ``switokd_2t1s``): the reference's rule-made weights (classifiers
  scaled, as the generator) mapped into the method, then STEPS steps of peerkd's own training step
  (``FastStep``: one SGD, momentum 0.9, no Nesterov, weight decay 5e-4, the case's lr, the method's ``update_scales``)
  on the same batches. At every step: each pair's threshold (``delta``), gap (``ps_pt``) and mode (1T1S / 2T1S:
  whether the reference stepped the teacher's optimiser; 1T2S: the code's condition on its own recorded values), each
  network's loss, every parameter's gradient; after the last step every parameter and BN statistic (projections):
  the paused teacher's skipped update (no momentum, no weight decay) and the student's lr 0.01 included.

Tolerance ``fixture.RTOL`` (1e-5 of the largest |value|; of the norm for projections) for every threshold, gap,
loss and mode, and for the gradients of steps 0 and 1; GRADIENT_RTOL (1e-2) for step 2's gradients and FINAL_RTOL
(1e-3 of each tensor's norm) for the weights after the steps: float32 round-off of the updates amplified by a few
nearly dead BatchNorm channels (see GRADIENT_RTOL). Wrong settings
that fail here: the teacher stepped in expert mode (its loss masked, its update not), the student at the teacher's
learning rate, each pair's own epsilon in the multi-network cases.
"""
from __future__ import annotations

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from peerkd.models import build_model
from peerkd.training.step import FastStep
from tests.golden import fixture
from tests.golden.network_check import assert_gradients, check_network, load_in_order, projection
from tests.golden.rule_weights import rule_weights
from tests.helpers import build

NETWORKS = fixture.load("switokd_networks")
CASES = {"1t1s": fixture.load("switokd_1t1s"), "1t2s": fixture.load("switokd_1t2s"),
         "2t1s": fixture.load("switokd_2t1s")}
GRADIENT_RTOL = [1e-5, 1e-5, 1e-2]  # step k's tolerance for the gradients: after two updates a few BatchNorm
# parameters of nearly dead channels amplify the updates' float32 round-off (measured: the thresholds, gaps, losses
# and modes agree to 5e-7 at every step, the gradients to 5e-6 at steps 0 and 1, and at step 2 all but a few BN
# parameters of a teacher's first stages to 1e-5, those to 5e-3 of their norm, by the run); a wrong rate or a stepped
# paused teacher moves the thresholds of step 1 or 2 by far more than RTOL
FINAL_RTOL = 1e-3  # the weights after the last step, of each tensor's norm (the same round-off)
GRADIENT_FLOOR = 1e-2  # x the largest gradient norm: the biases of the convolutions before a BN (meliketoy's WRN)
# have gradients that are zero but for round-off (norm 1e-7 where others are 1, differing by 1e-8 x the largest);
# every gradient is compared to 1e-5 of its norm or of 1 % of the largest, whichever is larger
CLASSIFIERS = ("linear.", "classifier.")
# the reference's network tags in peerkd's ``models`` order, peerkd's model names and lr / optim.lr
ORDER = {"1t1s": ["model", "model_ks2"], "1t2s": ["model2", "model", "model_ks2"],
         "2t1s": ["model", "model2", "model_ks2"]}
MODELS = {"1t1s": ["wrn16_2_meliketoy", "wrn16_1_meliketoy"], "1t2s": ["wrn16_1_meliketoy"] * 3,
          "2t1s": ["wrn16_1_meliketoy"] * 3}
# the code's recorded names of each pair's (delta, ps_pt, t_label, s_label), in the method's pair order
PAIR_NAMES = {"1t1s": [("delta", "ps_pt", "t_label", "s_label")],
              "1t2s": [("delta2", "ps_pt2", "t_label2", "s_label2"), ("delta", "ps_pt", "t_label", "s_label")],
              "2t1s": [("delta", "ps_pt", "t_label", "s_label"), ("delta2", "ps_pt2", "t_label2", "s_label2")]}
# the code's loss variable of each network (peerkd order), and whether it exists only when that network stepped
LOSSES = {"1t1s": [("loss_full", True), ("loss_ks2", False)],
          "1t2s": [("loss_full2", False), ("loss_full", False), ("loss_ks2", False)],
          "2t1s": [("loss_full", True), ("loss_full2", True), ("loss_ks2", False)]}


# One torch thread, as the generator: with two, CPU reductions sum in another order and three steps amplify
# that round-off to 5e-3 of a gradient (measured on 1T2S's teacher at step 2); with one, every step agrees to 1e-5.
from tests.helpers import one_torch_thread  # noqa: E402,F401  (autouse, module scope)


@pytest.mark.parametrize("tag", ["wrn16_2_meliketoy", "mobilenetv2_half", "wrn16_1_meliketoy", "wrn16_10_meliketoy",
                                 "mobilenet_cifar"])
def test_network_equals_the_reference(tag):
    classes = NETWORKS.meta["case"]["networks"][tag]["num_classes"]  # WRN-16-1: the CIFAR-10 code's, 10 classes
    check_network(NETWORKS, tag, build_model(tag, classes), gradient_floor=GRADIENT_FLOOR)


def method_with_reference_weights(case: str, **options):
    golden = CASES[case]
    meta = golden.meta["case"]
    lrs = [meta["lrs"][t] / meta["lrs"][ORDER[case][0]] for t in ORDER[case]]
    tree = {"name": "switokd", "topology": meta["topology"], "models": MODELS[case], "lr_scales": lrs, **options}
    method = build(tree, TaskInfo(num_classes=100, num_train=64))
    names = {}
    for i, tag in enumerate(ORDER[case]):
        weights = rule_weights({f"{tag}.{k}": s for k, s in meta["shapes"][tag]})
        weights = {k[len(tag) + 1:]: v * meta["logit_scale"] if k[len(tag) + 1:].startswith(CLASSIFIERS) else v
                   for k, v in weights.items()}
        mapped = load_in_order(method.models[i], weights)
        names.update({f"{tag}.{k}": f"models.{i}.{v}" for k, v in mapped.items()})
    return method, names


def images(golden, k: int) -> torch.Tensor:
    x = torch.randn(golden.meta["case"]["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(100 + k))
    fixture.assert_close(x.double().sum(dim=(1, 2, 3)), golden[f"batch/x{k}_sums"], f"images of step {k}")
    return x


def run_steps(case: str, student_only: bool = False, steps: int | None = None, **options):
    """``(per-step records, final state by reference name)`` of peerkd's step on the fixture's batches."""
    golden = CASES[case]
    method, names = method_with_reference_weights(case, **options)
    method.train()
    lr = golden.meta["case"]["lrs"][ORDER[case][0]]
    step = FastStep(method, method.trainable_parameters(), lr=lr, momentum=0.9, nesterov=False, weight_decay=5e-4,
                    update_scales=method.update_scales()[-1:] if student_only else method.update_scales())
    params, records = dict(method.named_parameters()), []
    for k in range(steps or golden.meta["case"]["steps"]):
        x = images(golden, k)
        step(Batch(x=x, y=golden[f"batch/y{k}"], index=torch.arange(x.shape[0])))
        logs, _, _ = step.drain_logs()
        grads = {ref: params[ours].grad if params[ours].grad is not None else torch.zeros_like(params[ours])
                 for ref, ours in names.items() if ours in params}
        records.append({"logs": logs, "grads": grads, "threshold": method.threshold.clone(),
                        "gap": method.gap.clone(), "learning": method.learning.clone()})
    state = method.state_dict()
    final = {ref: state[ours].float() for ref, ours in names.items() if not ref.endswith("num_batches_tracked")}
    return records, final


def reference_learning(golden, k: int, case: str) -> list[float]:
    """Each pair's mode at step k as the code decided it: 1T1S / 2T1S from whether it stepped the teacher, 1T2S (whose
    teacher always steps) from its ``if ps_pt > delta and t_label < s_label`` on its recorded values."""
    if case == "1t2s":
        value = lambda n: golden[f"state/step{k}/{n}"].item()  # noqa: E731
        return [float(not (value(g) > value(d) and value(t) < value(s))) for d, g, t, s in PAIR_NAMES[case]]
    stepped = golden[f"state/step{k}/stepped"].tolist()
    return [float(stepped[i]) for i in range(len(PAIR_NAMES[case]))]


def assert_steps(case: str, records, final, final_rtol: float = FINAL_RTOL) -> None:
    golden = CASES[case]
    meta = golden.meta["case"]
    keys = {"1t1s": ("teacher", "student"), "1t2s": ("teacher", "student1", "student2"),
            "2t1s": ("teacher1", "teacher2", "student")}[case]
    for k, record in enumerate(records):
        rtol = fixture.RTOL
        for p, (delta, gap, _, s_label) in enumerate(PAIR_NAMES[case]):
            # delta = d_s - eps d_t is a difference of terms of order 1: compared to the larger of |delta| and d_s
            expected = golden[f"state/step{k}/{delta}"]
            scale = max(expected.abs().item(), golden[f"state/step{k}/{s_label}"].item())
            diff = (record["threshold"][p] - expected[0]).abs().item()
            assert diff <= rtol * scale, f"step {k} pair {p} threshold: {diff:.3g} > {rtol} x {scale:.3g}"
            fixture.assert_close(record["gap"][p:p + 1], golden[f"state/step{k}/{gap}"], f"step {k} pair {p} gap",
                                 rtol)
        assert record["learning"].tolist() == reference_learning(golden, k, case), f"step {k} modes"
        stepped = golden[f"state/step{k}/stepped"].tolist()
        for i, (name, only_if_stepped) in enumerate(LOSSES[case]):
            if only_if_stepped and not stepped[i]:
                assert record["logs"][f"loss_{keys[i]}"] == 0.0, f"step {k}: a paused {keys[i]} has a loss"
                continue
            fixture.assert_close(torch.tensor([record["logs"][f"loss_{keys[i]}"]]), golden[f"state/step{k}/{name}"],
                                 f"step {k} loss of {keys[i]}", rtol)
        assert_gradients(record["grads"], meta["gradient_names"], golden[f"state/grad_projection/step{k}"],
                         f"step {k} gradient", rtol=GRADIENT_RTOL[min(k, len(GRADIENT_RTOL) - 1)],
                         floor=GRADIENT_FLOOR)
    for name, row in zip(meta["final_names"], golden["state/final_projection"]):
        diff = (projection(name, final[name]) - row.double()).abs().max().item()
        assert diff <= final_rtol * row[-1].item(), f"{name} after the steps: {diff:.3g} > {final_rtol} x |w|"


@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_equal_the_reference(case):
    golden = CASES[case]
    modes = {tuple(reference_learning(golden, k, case)) for k in range(golden.meta["case"]["steps"])}
    assert any(0.0 in m for m in modes) and any(1.0 in m for m in modes), f"the fixture has one mode only: {modes}"
    assert_steps(case, *run_steps(case))


def test_a_stepped_paused_teacher_fails():
    """The student's rate scaled but the teacher stepped in expert mode (as a 0/1 mask on its loss alone would do):
    weight decay moves the paused teacher at step 0 (by lr x 5e-4 of its weights), so step 1's gap differs (by 3e-5
    of 1.7, three times the tolerance), and momentum moves it at step 2."""
    with pytest.raises(AssertionError, match="step [12] pair 0 (threshold|gap)"):
        assert_steps("1t1s", *run_steps("1t1s", student_only=True))


def test_the_students_learning_rate_matters():
    with pytest.raises(AssertionError, match="step 1 pair 0 threshold"):
        assert_steps("1t1s", *run_steps("1t1s", steps=2, lr_scales=[1.0, 1.0]))


def test_each_pairs_own_epsilon_is_not_the_codes():
    with pytest.raises(AssertionError, match="step 0 pair 1 threshold"):
        assert_steps("2t1s", *run_steps("2t1s", steps=1, shared_epsilon=False))
