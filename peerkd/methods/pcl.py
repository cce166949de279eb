"""PCL: Peer Collaborative Learning for Online Knowledge Distillation. Wu & Gong, AAAI 2021 (arXiv 2006.04147);
the strongest baseline of CSS's Table 1. Written from the paper's public description; the readings below are ours.

A multi-branch network (shared trunk, m peers = branches, ``branched(model, split_at, m)``). Every peer j sees its
own random augmentation x_j of the batch (``views = m``); the trunk runs once per view.

- Peer ensemble teacher: the peers' pooled features are concatenated and classified by an extra linear layer,
  z_e = W_e [f_1; ...; f_m]; it is trained by CE and distils into every peer.
- Peer mean teachers: a temporal mean (exponential moving average) of the whole multi-branch network,
  theta'_t = beta_t theta'_{t-1} + (1 - beta_t) theta_t, beta_t = min(beta, 1 - 1/(t + 1)) (Tarvainen & Valpola's
  warm-up), beta = 0.999. Peer j's mean teacher is branch j of that network, fed x_j.

    L = sum_j CE(z_j, y) + CE(z_e, y) + w(e) * (L_pe + L_pm)
    L_pe = sum_j T^2 KL(softmax(z_e / T) || softmax(z_j / T))                       (peer ensemble teacher)
    L_pm = sum_j 1/(m-1) sum_{l != j} T^2 KL(softmax(z~_l / T) || softmax(z_j / T)) (peer mean teachers of the others)
    w(e) = exp(-5 (1 - min(e, R) / R)^2), the sigmoid-shaped ramp-up of temporal ensembling over R epochs

Readings chosen:
- Targets are detached: the ensemble teacher learns from CE only, the mean teachers not at all (their parameters do
  not train: ``requires_grad = False``; they live in ``mean_net`` so ``state_dict`` holds them).
- The EMA update runs at the start of every training step with the parameters the optimiser left after the previous
  step, so teacher t averages theta_0 .. theta_t; the last optimiser step of a run is not averaged in (one step of
  lag, immaterial over a run). ``ema_order: after_step`` reproduces the public PCL reproduction
  (shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation, ``src/trainer.py`` calls
  ``update_ema_variables(model, mean_model, 0.999, global_step)`` after each optimiser step, ``src/utils/ema.py``
  ``alpha = min(1 - 1/(global_step + 1), 0.999)``): teacher t averages theta_1 .. theta_t, and the first step's
  teacher is the mean network as built. peerkd runs that update at the start of the next step (the same parameters,
  the same alpha with global_step = t - 1) and skips it at t = 0; the reproduction's first teacher is an independently
  initialised network, peerkd's a copy of the peers (one step; alpha = 0 at global_step 0 overwrites it either way).
  Only parameters are averaged; the mean network keeps its own BatchNorm statistics, gathered by its own forward passes
  in training mode (batch statistics, as mean-teacher code runs it).
- Ramp-up: R = 80 epochs (``rampup_epochs``; 0 disables it), applied to both distillation terms, evaluated per epoch
  (epochs counted from 0). ``rampup_form: pcl_reproduction`` reproduces the public reproduction's
  ``LossWrapper.compute_rampup_weight(epoch, lambd=1.0, alpha=80)`` (``src/losses/loss_wrapper.py``): 1 for
  e > R, else exp(-5 (1 - e / lambd)^2) with lambd = 1 -- a ramp-up meant as exp(-5 (1 - e/R)^2) that divides by the
  weight instead of R, so w = 0.0067 at e = 0, 1 at e = 1, 0.0067 at e = 2 and below 2e-9 from e = 3 to R: the
  reproduction trains epochs 3-80 without distillation. The default ``sigmoid`` is the intended curve.
- The peers are branches split before the last stage (``split_at: -1``), the ONE layout PCL builds on.
- ``predict``: ``branch{j}`` (the trained peers), ``ensemble_teacher`` (z_e), ``mean_teacher{j}`` (the temporal mean
  of peer j: what PCL deploys) and ``ensemble`` (the mean probability of the mean teachers). CSS's Table 1 quotes
  PCL's own numbers, the peer mean teachers' accuracy; ``export()`` returns ``mean_teacher0`` as a plain model.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from peerkd.losses import hard_ce, kd_kl, mean_probs_logits
from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.methods.parts.branching import build_branched
from peerkd.methods.parts.rampup import sigmoid_rampup
from peerkd.core.registry import register_method


@torch.no_grad()
def ema_update(mean_model: nn.Module, model: nn.Module, decay: float | torch.Tensor) -> None:
    """``p' <- decay * p' + (1 - decay) * p`` for every parameter (buffers are left to each model). ``decay`` may be
    a device tensor, so the update needs no host synchronisation."""
    weight = 1.0 - decay
    if not isinstance(weight, torch.Tensor):
        weight = torch.tensor(weight)
    for p_mean, p in zip(mean_model.parameters(), model.parameters()):
        p_mean.lerp_(p.detach(), weight.to(p_mean))  # p' + (1 - decay) (p - p') = decay p' + (1 - decay) p


def reproduction_rampup(epoch: float, length: float) -> float:
    """The public PCL reproduction's ramp-up weight (``loss_wrapper.py``, ``lambd = 1``, ``alpha = length``): 1 past
    ``length`` epochs, else ``exp(-5 (1 - epoch)^2)`` (module docstring: off from epoch 3 to ``length``)."""
    if epoch > length:
        return 1.0
    return math.exp(-5.0 * (1.0 - float(epoch)) ** 2)


@register_method("pcl")
class PCL(Method):
    """Peer Collaborative Learning (Wu & Gong 2021): per-peer views, peer ensemble teacher, EMA peer mean teachers."""

    @dataclass
    class Options:
        model: str = "resnet110"  # the backbone whose last stage(s) become the peers
        model_options: dict = field(default_factory=dict)  # keyword arguments for the model's factory
        branches: int = 3  # m peers (CSS compares at m = 3; PCL's default)
        split_at: int = -1  # stages in the shared trunk; <= 0 counts from the end (-1: all but the last stage)
        temperature: float = 3.0  # T of both distillation terms (PCL and ONE use 3)
        ema_decay: float = 0.999  # beta of the temporal mean, per step (mean teacher's value)
        rampup_epochs: float = 80.0  # R of the distillation ramp-up w(e), epochs; 0 turns the ramp-up off
        ensemble_weight: float = 1.0  # weight of L_pe inside the ramped term (1 in the paper)
        mean_teacher_weight: float = 1.0  # weight of L_pm inside the ramped term (1 in the paper)
        separate_views: bool = True  # each peer its own augmentation of the batch (asks m views); false: one view
        # when the EMA takes the peers' parameters: before_step (ours: theta_0 .. theta_t) or after_step (the public
        # reproduction's order: theta_1 .. theta_t; its alpha uses the previous step's count)
        ema_order: Literal["before_step", "after_step"] = "before_step"
        # the ramp-up's curve: sigmoid (exp(-5 (1 - e/R)^2), intended) or pcl_reproduction (the public
        # reproduction's exp(-5 (1 - e)^2) up to R, then 1: distillation off for epochs 3..R)
        rampup_form: Literal["sigmoid", "pcl_reproduction"] = "sigmoid"

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # branches split the backbone's stages

    def __init__(self, options, task):
        super().__init__(options, task)
        from peerkd.core.errors import ConfigError

        if options.branches < 2:
            raise ConfigError("method.branches: PCL needs at least two peers")
        self.net = build_branched(options.model, task.num_classes, options.split_at, options.branches,
                                  options.model_options)
        self.ensemble_fc = nn.Linear(self.net.feature_dim * options.branches, task.num_classes)
        self.mean_net = copy.deepcopy(self.net)
        for p in self.mean_net.parameters():
            p.requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # EMA updates done so far
        self.register_buffer("rampup_weight", torch.tensor(self.rampup(0)))  # w(e)

    @classmethod
    def data_request(cls, options):
        return DataRequest(views=options.branches if options.separate_views else 1)

    def rampup(self, epoch: int) -> float:
        """w(e) of the chosen ``rampup_form``."""
        form = reproduction_rampup if self.options.rampup_form == "pcl_reproduction" else sigmoid_rampup
        return form(epoch, self.options.rampup_epochs)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.rampup_weight.fill_(self.rampup(epoch))

    @torch.no_grad()
    def update_mean_teacher(self) -> None:
        """One EMA step with the warm-up decay ``min(beta, 1 - 1/(t + 1))``, t the number of earlier training steps;
        with ``ema_order: after_step`` the update the reproduction makes after step t - 1 (``min(beta, 1 - 1/t)``,
        none at t = 0)."""
        t = self.ema_steps.float()  # on the device: no host sync inside the training step
        if self.options.ema_order == "after_step":
            decay = torch.where(t > 0, torch.clamp(1.0 - 1.0 / t.clamp_min(1.0), max=self.options.ema_decay), 1.0)
        else:
            decay = torch.clamp(1.0 - 1.0 / (t + 1.0), max=self.options.ema_decay)
        ema_update(self.mean_net, self.net, decay)
        self.ema_steps += 1

    def peer_outputs(self, net, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits and pooled features of every peer of ``net``, peer j on ``views[j]`` (the trunk runs once per view,
        also when the views are one: its BatchNorm statistics move once per peer, as they always have)."""
        out = net.tail_outputs([net.trunk(x) for x in views])
        return out.logits, out.features

    def _views(self, batch) -> list[torch.Tensor]:
        return [batch.view(j if self.options.separate_views else 0) for j in range(self.options.branches)]

    def forward(self, batch) -> StepOutput:
        self.update_mean_teacher()
        views = self._views(batch)
        logits, features = self.peer_outputs(self.net, views)
        ensemble = self.ensemble_fc(torch.cat(features, dim=1))
        with torch.no_grad():
            mean_logits, _ = self.peer_outputs(self.mean_net, views)
        t, m = self.options.temperature, self.options.branches
        ce = sum(hard_ce(z, batch) for z in logits) + hard_ce(ensemble, batch)
        pe = sum(kd_kl(z, ensemble.detach(), t) for z in logits)
        pm = sum(sum(kd_kl(z, mean_logits[l], t) for l in range(m) if l != j) / (m - 1) for j, z in enumerate(logits))
        distil = self.options.ensemble_weight * pe + self.options.mean_teacher_weight * pm
        total = ce + self.rampup_weight * distil
        return StepOutput(total, {"ce": ce.detach(), "pe": pe.detach(), "pm": pm.detach(),
                                  "rampup": self.rampup_weight.detach().clone()})

    def predict(self, x):
        views = [x] * self.options.branches
        logits, features = self.peer_outputs(self.net, views)
        mean_logits, _ = self.peer_outputs(self.mean_net, views)
        out = {f"branch{j}": z for j, z in enumerate(logits)}
        out["ensemble_teacher"] = self.ensemble_fc(torch.cat(features, dim=1))
        out.update({f"mean_teacher{j}": z for j, z in enumerate(mean_logits)})
        out["ensemble"] = mean_probs_logits(mean_logits)
        return out

    def diversity_groups(self):
        m = self.options.branches
        return {"branches": [f"branch{j}" for j in range(m)], "mean_teachers": [f"mean_teacher{j}" for j in range(m)]}

    def export(self, key=None):
        key = key or "mean_teacher0"
        m = self.options.branches
        for prefix, net in (("branch", self.net), ("mean_teacher", self.mean_net)):
            if key in [f"{prefix}{j}" for j in range(m)]:
                return net.export_branch(int(key[len(prefix):])).eval()
        raise KeyError(f"cannot export '{key}': exportable keys are branch0..{m - 1} and mean_teacher0..{m - 1}")
