"""SwitOKD: Qian, Wang, Yin, Hong, Wang, "Switchable Online Knowledge Distillation", ECCV 2022 (arXiv 2209.04996).

A large teacher and a small student train together; when the student falls too far behind, the teacher is paused
("expert mode") while the student keeps learning from it, otherwise both learn from each other ("learning mode").
As the authors' code computes it (hfutqian/SwitOKD @ a3f9623b9ae65823d39f4a087421a1655d21909a,
``SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2/main.py`` ``train``; the CIFAR-10 folder's ``main.py`` is the same
step), on every batch, from the current forward pass, with every quantity computed on detached logits:

    d_s = mean_i || softmax(z_s,i) - onehot(y_i) ||_1        (the code's ``s_label``)
    d_t = mean_i || softmax(z_t,i) - onehot(y_i) ||_1        (``t_label``)
    G   = mean_i || softmax(z_s,i / T) - softmax(z_t,i / T) ||_1   (``ps_pt``, the distillation gap)
    eps = exp(-d_t / (d_t + d_s)),    delta = d_s - eps * d_t        (``epsilon``, ``delta``: the switching threshold)
    expert = (G > delta) and (d_t < d_s)                             (otherwise learning mode)

    L_s = CE(z_s, y) + KL(softmax(z_t / T).detach() || softmax(z_s / T))          (every step)
    L_t = CE(z_t, y) + KL(softmax(z_s / T).detach() || softmax(z_t / T))          (learning mode only)

and the step is ``L = L_s + (1 - expert) L_t``. In expert mode the code does not call the teacher's
``optimizer.step()`` at all, so its weight decay and momentum do not move it either (the teacher's gradients were zeroed
by ``optimizer.zero_grad()``); its forward still runs in train mode, so its BatchNorm running statistics do move.
Here ``update_scales`` gives the step the teacher's 0/1 mode as a device tensor: 0 puts the teacher's parameters and
momentum buffers back after the shared SGD step (``peerkd/training/step.py`` ``FastStep._scaled_update``), which is
exactly the code's skipped step; the mode is tensor arithmetic, no host sync.

Readings, with evidence (all from the files above):

- The label distances use ``softmax(z)`` without temperature (``dist_s_label``), the gap and the KL terms use
  ``T = 1`` (``dist_s_t(..., 1)``, ``kl_div(..., 1)``); ``temperature`` divides the gap's and the KL's logits (the
  paper's p^tau) and the KL carries ``T^2`` (``peerkd.losses.kd_kl``): at the default ``T = 1`` both equal the code.
- The switch: the README's criterion compares the gap G with delta alone; the code's ``if`` adds ``t_label <
  s_label`` (expert mode only while the teacher is the closer to the labels): kept, as the code runs.
- Per-network learning rates: the CIFAR-100 code's teacher (WRN-16-2) has SGD lr 0.1 and its student (0.5
  MobileNetV2) lr 0.01, both momentum 0.9 (no Nesterov), weight decay 5e-4, x0.1 at epochs 140, 200, 250 of 299;
  the CIFAR-10 code uses lr 0.1 for both. ``lr_scales`` multiplies ``optim.lr`` per network, through the same
  ``update_scales`` (SGD's update is linear in the rate and its momentum buffer does not depend on it).
- Multi-network (``SwitOKD_code/multi-net results (table 7)/{1T2S,2T1S}/.../main.py``): one threshold per
  teacher-student pair, each computed as above. **1T2S** (``models: [teacher, student1, student2]``; the code's
  ``model2`` WRN-16-10, ``model`` WRN-16-2, ``model_ks2`` MobileNet): every student learns from the labels, the
  teacher and the other student, ``L_sj = CE + KL(t || s_j) + KL(s_other || s_j)``; the teacher's loss is
  ``w0 CE + w2 KL(s2 || t) + w1 KL(s1 || t)`` with ``w_j = 1 - expert_j`` and ``w0 = 0`` only when both pairs are in
  expert mode, and the teacher's optimizer steps every batch (so a paused teacher still moves by momentum and weight
  decay, as in the code). **2T1S** (``models: [teacher1, teacher2, student]``; the code's ``model`` WRN-16-2,
  ``model2`` WRN-16-10, ``model_ks2``): the student learns from both teachers, ``L_s = CE + KL(t1 || s) + KL(t2 ||
  s)``; teacher k learns from the student and the other teacher, ``CE + KL(s || t_k) + KL(t_other || t_k)``, and only
  in its own pair's learning mode, skipping its optimizer step otherwise (as the two-network code).
- ``shared_epsilon``: in both multi-network files the second pair's ``epsilon`` is computed from the first pair's
  distances (1T2S: ``epsilon = exp(-t_label2 / (t_label2 + s_label2))``, the (teacher, student2) pair's; 2T1S:
  ``epsilon2 = exp(-t_label / (t_label + s_label))``, the (teacher1, student) pair's). True (default) follows the
  code; False gives each pair its own, as the README's delta for one pair reads.

Deviations from the code, each with its switch: the multi-network code trains its MobileNet student with Adam (lr
0.01, weight decay 1e-4); peerkd's one SGD cannot (``lr_scales`` gives it SGD at a scaled rate instead). The state
(each pair's last ``threshold``, ``gap``, ``learning`` mode, and each network's update scale) is in buffers, so a
checkpoint restores it; the logs give each pair's threshold, gap and learning-mode fraction. The paper's text was
not available here: equation numbers are not cited; the formulas are the README's and the code's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl
from peerkd.models import build_model
from peerkd.models.members import build_members

Topology = Literal["1T1S", "1T2S", "2T1S"]
KEYS = {"1T1S": ("teacher", "student"), "1T2S": ("teacher", "student1", "student2"),
        "2T1S": ("teacher1", "teacher2", "student")}
DEFAULT_KEY = {"1T1S": "student", "1T2S": "student1", "2T1S": "student"}  # the network a deployment wants
PAIRS = {"1T1S": ((0, 1),), "1T2S": ((0, 2), (0, 1)), "2T1S": ((0, 2), (1, 2))}  # (teacher, student), code's order


def label_distance(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i || softmax(z_i) - onehot(y_i) ||_1`` (the code's ``dist_s_label``: no temperature)."""
    probs = F.softmax(logits.float(), dim=-1)
    return (probs - F.one_hot(y, probs.shape[-1]).to(probs.dtype)).abs().sum(-1).mean()


def prediction_gap(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``G = mean_i || softmax(z_s / T) - softmax(z_t / T) ||_1`` (the code's ``dist_s_t``)."""
    p_s = F.softmax(student.float() / temperature, dim=-1)
    p_t = F.softmax(teacher.float() / temperature, dim=-1)
    return (p_s - p_t).abs().sum(-1).mean()


def switching_threshold(d_s: torch.Tensor, d_t: torch.Tensor, eps_d_s: torch.Tensor | None = None,
                        eps_d_t: torch.Tensor | None = None) -> torch.Tensor:
    """``delta = d_s - exp(-d_t' / (d_t' + d_s')) d_t``, the primed distances ``eps_d_*`` (default: the pair's own)
    giving the ``epsilon``."""
    eps_d_s = d_s if eps_d_s is None else eps_d_s
    eps_d_t = d_t if eps_d_t is None else eps_d_t
    return d_s - torch.exp(-(eps_d_t / (eps_d_t + eps_d_s))) * d_t


@register_method("switokd")
class SwitOKD(Method):
    """Switchable online KD (Qian et al. 2022): the teacher pauses (expert mode) while the gap exceeds a threshold."""

    @dataclass
    class Options:
        topology: Topology = "1T1S"  # 1T1S: [teacher, student]; 1T2S: [teacher, s1, s2]; 2T1S: [t1, t2, student]
        models: list[str] = field(default_factory=lambda: ["wrn16_2_meliketoy", "mobilenetv2_half"])  # as above
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory
        lr_scales: list[float] = field(default_factory=lambda: [1.0, 0.1])  # each network's lr / optim.lr (code:
        # teacher 0.1, student 0.01 on CIFAR-100); [] = 1 for all
        temperature: float = 1.0  # T of the gap and the KL terms (the code: 1; the label distances have none)
        shared_epsilon: bool = True  # multi-network: every pair's epsilon from the code's first pair (see docstring)

    def __init__(self, options, task):
        super().__init__(options, task)
        count = len(KEYS[options.topology])
        if len(options.models) != count:
            raise ConfigError(f"method.models: SwitOKD {options.topology} trains {count} networks "
                              f"({', '.join(KEYS[options.topology])}), got {len(options.models)}")
        scales = list(options.lr_scales) or [1.0] * count
        if len(scales) != count or any(s <= 0 for s in scales):
            raise ConfigError(f"method.lr_scales: {count} positive numbers (one per network in method.models) or [], "
                              f"got {list(options.lr_scales)}")
        if options.temperature <= 0:
            raise ConfigError(f"method.temperature: must be > 0, got {options.temperature}")
        # separate execution: each network's parameters are its own, so the step can scale or pause them one by one
        self.models = build_members([build_model(name, task.num_classes, key="method.models", **options.model_options)
                                     for name in options.models], "separate")
        pairs = len(PAIRS[options.topology])
        self.register_buffer("lr_scale", torch.tensor(scales, dtype=torch.float32))
        self.register_buffer("update_scale", torch.tensor(scales, dtype=torch.float32))  # lr_scale x mode, per net
        self.register_buffer("threshold", torch.zeros(pairs))  # each pair's delta at the last step
        self.register_buffer("gap", torch.zeros(pairs))  # each pair's G at the last step
        self.register_buffer("learning", torch.ones(pairs))  # 1: learning mode at the last step, 0: expert mode

    def update_scales(self):
        return [(list(self.models[i].parameters()), self.update_scale[i]) for i in range(len(self.models))]

    def _switch(self, logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Each pair's learning mode (1.0) or expert mode (0.0) from detached logits; fills the state buffers."""
        topology = self.options.topology
        detached = [z.detach() for z in logits]
        distances = [label_distance(z, y) for z in detached]
        first_t, first_s = PAIRS[topology][0]
        modes, thresholds, gaps = [], [], []
        for t, s in PAIRS[topology]:
            d_s, d_t = distances[s], distances[t]
            if self.options.shared_epsilon:
                threshold = switching_threshold(d_s, d_t, distances[first_s], distances[first_t])
            else:
                threshold = switching_threshold(d_s, d_t)
            gap = prediction_gap(detached[s], detached[t], self.options.temperature)
            expert = (gap > threshold) & (d_t < d_s)
            modes.append(1.0 - expert.float())
            thresholds.append(threshold)
            gaps.append(gap)
        learning = torch.stack(modes)
        with torch.no_grad():
            self.threshold.copy_(torch.stack(thresholds))
            self.gap.copy_(torch.stack(gaps))
            self.learning.copy_(learning)
        return learning

    def forward(self, batch) -> StepOutput:
        x, y = batch.view(0), batch.y
        logits = self.models.run(x)
        learning = self._switch(logits, y)
        T = self.options.temperature
        kl = lambda i, j: kd_kl(logits[i], logits[j].detach(), T)  # noqa: E731  (network i learns from j)
        ce = [hard_ce(z, batch) for z in logits]
        topology = self.options.topology
        scale = self.lr_scale.clone()
        if topology == "1T1S":
            losses = [learning[0] * (ce[0] + kl(0, 1)), ce[1] + kl(1, 0)]
            scale[0] = scale[0] * learning[0]
        elif topology == "1T2S":  # pairs: (teacher, s2) then (teacher, s1); the teacher always steps
            w2, w1 = learning[0], learning[1]
            w0 = torch.maximum(w1, w2)  # 0 only when both pairs are in expert mode
            losses = [w0 * ce[0] + w2 * kl(0, 2) + w1 * kl(0, 1), ce[1] + kl(1, 2) + kl(1, 0),
                      ce[2] + kl(2, 1) + kl(2, 0)]
        else:  # 2T1S: pairs (t1, s), (t2, s); a teacher in expert mode is not stepped
            losses = [learning[0] * (ce[0] + kl(0, 2) + kl(0, 1)), learning[1] * (ce[1] + kl(1, 2) + kl(1, 0)),
                      ce[2] + kl(2, 0) + kl(2, 1)]
            scale[0] = scale[0] * learning[0]
            scale[1] = scale[1] * learning[1]
        with torch.no_grad():
            self.update_scale.copy_(scale)
        logs = {}
        for key, part, c in zip(KEYS[topology], losses, ce):
            logs[f"loss_{key}"], logs[f"ce_{key}"] = part.detach(), c.detach()
        for k in range(len(learning)):
            logs[f"threshold{k}"], logs[f"gap{k}"] = self.threshold[k].clone(), self.gap[k].clone()
            logs[f"learning{k}"] = learning[k].detach()
        return StepOutput(sum(losses), logs)

    def predict(self, x):
        return dict(zip(KEYS[self.options.topology], self.models.run(x)))

    def export(self, key=None):
        keys = KEYS[self.options.topology]
        key = key or DEFAULT_KEY[self.options.topology]
        if key not in keys:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(keys)}")
        return self.models.export(keys.index(key)).eval()
