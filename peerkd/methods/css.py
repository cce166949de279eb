"""CSS: Channel Self-Supervision for Online Knowledge Distillation. Fan, Cheng, Wang, Yang, Deng, Liu, Deng, Liu
(arXiv 2022; paper 000 in /work/shared/papers).

Two networks (``models``; they may differ, Table 4), each a shared trunk with m branches (``branches``), built with
``branched(name, split_at, m)``. Three kinds of diversity and a dynamic weight:

- Sample diversity (SD, eq. 1): the trunk's feature map F is masked per branch, F_j = A_j * F. A_j zeroes one quarter
  of every channel at the same position: the feature map is cut into 2 x 2 quadrants (rows split at floor(H/2),
  columns at floor(W/2)) ordered top-left, top-right, bottom-left, bottom-right, and branch j zeroes quadrant j.
  Non-overlapping masks of a quarter allow at most 4 branches with SD on.
- Target diversity (TD, eq. 2): branch j's classifier has K*m outputs and is trained with CE on the joint label
  (y, j), indexed ``y * m + j`` (class-major, as in Lee et al. 2020's label augmentation), so the K logits of
  transform j are ``logits[:, j::m]``. At test time (eq. 3-4) branch j contributes those K logits and the network's
  prediction is the softmax of their mean over branches: P_i = (1/m) sum_j mu_ij^T F'_j.
- Network diversity (ND, eq. 6-7): branch j of net 1 distils with branch j of net 2 (same transform):

      L = L_ce^1 + L_ce^2 + w * T^2 * (alpha_1 * sum_j KL(p_j^2 || p_j^1) + alpha_2 * sum_j KL(p_j^1 || p_j^2))
      L_ce^n = sum_j CE(z_j^n, (y, j))                                        (eq. 5 sums over the m branches)

- Dynamic weights (DW, eq. 5): alpha_1 = L_ce^1 / L_ce^2, alpha_2 = 1 / alpha_1, computed on the current batch and
  detached (no gradient flows through the ratio). Without DW alpha_1 = alpha_2 = 1 (Table 5 case C's fixed factor).

Readings where the paper is ambiguous:
- eq. 7 writes KL(logits_i^net1, logits_i^net2) under alpha_1 "for net1": read as the term that trains net 1 towards
  net 2, so the teacher side (the other network) is detached and alpha_1 grows when net 1 is the worse one, giving the
  better network the larger say, as section 3.3 explains.
- The KL is over each branch's whole joint softmax (K*m outputs, ``kl_space: joint``), which is what "logits_i" of a
  joint classifier is; ``kl_space: class`` distils only the K logits of the branch's own transform.
- The split point is not given ("the low-level feature map"): ``split_at: -1`` shares all stages but the last, the
  ONE/OKDDip branch layout the paper compares with. The masks apply at test time too (the transforms are known).
- The trunk's output is masked as the backbone's last trunk stage leaves it (post-activation for post-activation
  ResNets, the raw residual sum for pre-activation ones such as WRN / PyramidNet): the masked map is exactly what
  the branch receives.
- With one network (Table 5 cases A/B, 1 x 4) there is nothing to distil from: the loss is the CE terms alone.
- Without TD each branch has K outputs trained on y and the aggregate is still the mean of the branch logits.
- ``predict``: ``net{n}`` (eq. 3-4 aggregate: Table 1 "Ours"), ``net{n}_branch{j}`` (branch j's K logits of transform
  j) and ``ensemble`` (the mean of the two networks' probabilities: Table 1 "Ensemble", Table 4).
- ``export`` gives what was evaluated. ``export("net1")`` (the default) is network 1's eq. 3-4 aggregate as one
  module (:class:`CSSNetwork`: its trunk, the m quadrant masks under SD, the m tails, each tail's K logits of its own
  transform and their mean), equal to ``predict(x)["net1"]``. ``export("net1_branch0")`` is one branch path: without
  SD the plain registered backbone (trunk + that branch, its classifier cut to the K logits of its transform: rows
  j, m + j, ...), which a library loads by name; with SD the path must apply its quadrant mask, which a plain
  backbone cannot, so it is a :class:`CSSNetwork` of that one branch. ``ensemble`` mixes both networks and is
  exported by ``peerkd export`` as the method's own ``predict`` (peerkd/deploy/export.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from peerkd.losses import hard_ce, kd_kl, mean_probs_logits
from peerkd.core.method import Method, StepOutput
from peerkd.methods.parts.branching import build_branched_cohort
from peerkd.core.registry import register_method
from peerkd.models import build_model


def quadrant_masks(branches: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """``(m, 1, H, W)``: mask j is 1 everywhere but quadrant j (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
    which is 0. Rows split at H // 2, columns at W // 2."""
    if branches > 4:
        raise ValueError(f"quarter masks allow at most 4 branches, got {branches}")
    masks = torch.ones(branches, 1, height, width, device=device, dtype=dtype)
    half_h, half_w = height // 2, width // 2
    rows = [slice(0, half_h), slice(0, half_h), slice(half_h, height), slice(half_h, height)]
    cols = [slice(0, half_w), slice(half_w, width), slice(0, half_w), slice(half_w, width)]
    for j in range(branches):
        masks[j, :, rows[j], cols[j]] = 0
    return masks


def joint_batch(batch, transform: int, transforms: int):
    """The batch with its labels replaced by the joint labels ``y * m + j`` (mixed partner labels too)."""
    y_b = None if batch.y_b is None else batch.y_b * transforms + transform
    return dataclasses.replace(batch, y=batch.y * transforms + transform, y_b=y_b)


@register_method("css")
class CSS(Method):
    """Channel Self-Supervision (Fan et al.): masked trunk features, joint labels, paired branches, loss-ratio weights.
    """

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet110", "resnet110"])  # 2 nets (ND); 1 = no ND
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory
        branches: int = 3  # m, branches per network (the paper's m = 3; Table 2: 2, 3; Table 5: 4 or 2)
        split_at: int = -1  # stages in the shared trunk; <= 0 counts from the end (-1: all but the last stage)
        temperature: float = 3.0  # T of the KL, the paper's T = 3 (following ONE)
        sample_diversity: bool = True  # SD: per-branch quarter masks on the trunk's map (Table 5 switch)
        target_diversity: bool = True  # TD: K*m joint classifier per branch (Table 5 switch)
        dynamic_weights: bool = True  # DW: alpha_1 = CE1/CE2, alpha_2 = 1/alpha_1 (Table 5 switch); off: both 1
        kd_weight: float = 1.0  # w, a fixed factor on the whole KD term (1: eq. 7 as written)
        kl_space: Literal["joint", "class"] = "joint"  # "joint": KL over the K*m joint softmax; "class": over
        # transform j's K logits

    @classmethod
    def model_requirements(cls, options):
        return {"models": ("stages",)}  # branched networks: trunk + tails of each backbone's stages

    def __init__(self, options, task):
        super().__init__(options, task)
        from peerkd.core.errors import ConfigError

        if len(options.models) not in (1, 2):
            raise ConfigError("method.models: CSS takes one network (no ND) or two")
        if options.branches < 1:
            raise ConfigError("method.branches: at least 1")
        if options.sample_diversity and options.branches > 4:
            raise ConfigError("method.branches: quarter masks (sample_diversity) allow at most 4 branches")
        self.num_classes = task.num_classes
        self.transforms = options.branches if options.target_diversity else 1  # classifier outputs = K * transforms
        # the networks as one cohort: its layout (two identical networks under trainer.members grouped: one fused
        # trunk group and one fused group of all tails) is hidden behind network_logits and export_network, and its
        # state_dict keys are those of a ModuleList of BranchedNets under every execution (models/branched_cohort.py)
        self.nets = build_branched_cohort(options.models, task.num_classes * self.transforms, options.split_at,
                                          options.branches, options.model_options)

    # -- shared pieces ----------------------------------------------------------------------------------------
    def network_logits(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """``logits[n][j]``: the raw classifier outputs (K*m with TD, K without) of branch j of network n, each on its
        network's trunk map, masked with quadrant j under SD."""
        if not self.options.sample_diversity:
            return self.nets.branch_logits(x)
        m = self.options.branches
        return self.nets.branch_logits(
            x, lambda shared: quadrant_masks(m, shared.shape[-2], shared.shape[-1], shared.device, shared.dtype))

    def transform_logits(self, logits: torch.Tensor, j: int) -> torch.Tensor:
        """Branch j's K class logits: the joint outputs of transform j (``y * m + j``), or all of them without TD."""
        return logits[:, j::self.transforms] if self.transforms > 1 else logits

    def network_ce(self, logits: list[torch.Tensor], batch) -> torch.Tensor:
        """L_ce of one network: the sum over its branches of the CE with the joint labels (eq. 5)."""
        if self.transforms == 1:
            return sum(hard_ce(z, batch) for z in logits)
        return sum(hard_ce(z, joint_batch(batch, j, self.transforms)) for j, z in enumerate(logits))

    # -- training ---------------------------------------------------------------------------------------------
    def forward(self, batch) -> StepOutput:
        x = batch.view(0)
        logits = self.network_logits(x)
        ces = [self.network_ce(z, batch) for z in logits]
        total = sum(ces)
        logs = {f"ce{n + 1}": ce.detach() for n, ce in enumerate(ces)}
        if len(self.nets) == 2:
            t, w = self.options.temperature, self.options.kd_weight
            if self.options.dynamic_weights:
                alpha1 = (ces[0] / ces[1]).detach()
                alpha2 = 1.0 / alpha1
            else:
                alpha1 = alpha2 = torch.ones((), device=ces[0].device)
            side = [[self._kl_view(z, j) for j, z in enumerate(net_logits)] for net_logits in logits]
            kd1 = sum(kd_kl(s1, s2.detach(), t) for s1, s2 in zip(side[0], side[1]))  # trains net 1 towards net 2
            kd2 = sum(kd_kl(s2, s1.detach(), t) for s1, s2 in zip(side[0], side[1]))  # trains net 2 towards net 1
            total = total + w * (alpha1 * kd1 + alpha2 * kd2)
            logs.update(kl1=kd1.detach(), kl2=kd2.detach(), alpha1=alpha1, alpha2=alpha2)
        return StepOutput(total, logs)

    def _kl_view(self, logits: torch.Tensor, j: int) -> torch.Tensor:
        return self.transform_logits(logits, j) if self.options.kl_space == "class" else logits

    # -- evaluation -------------------------------------------------------------------------------------------
    def branch_keys(self, n: int) -> list[str]:
        return [f"net{n + 1}_branch{j}" for j in range(self.options.branches)]

    def predict(self, x):
        out, aggregates = {}, []
        for n, net_logits in enumerate(self.network_logits(x)):
            per_branch = [self.transform_logits(z, j) for j, z in enumerate(net_logits)]
            out.update(zip(self.branch_keys(n), per_branch))
            out[f"net{n + 1}"] = torch.stack(per_branch).float().mean(0)  # eq. 4: mean of the logits, eq. 3: softmax
            aggregates.append(out[f"net{n + 1}"])
        if len(aggregates) == 2:
            out["ensemble"] = mean_probs_logits(aggregates)
        return out

    def diversity_groups(self):
        """``branches``: every pair of branches of every network (Fig. 3's first measure); ``net{n}_branches``:
        within one network; ``mutual{j}``: branch j of net 1 against branch j of net 2 (Fig. 3's second measure,
        averaged over j by the plotting script)."""
        groups = {"branches": [k for n in range(len(self.nets)) for k in self.branch_keys(n)]}
        for n in range(len(self.nets)):
            groups[f"net{n + 1}_branches"] = self.branch_keys(n)
        if len(self.nets) == 2:
            for j in range(self.options.branches):
                groups[f"mutual{j}"] = [self.branch_keys(0)[j], self.branch_keys(1)[j]]
        return {name: keys for name, keys in groups.items() if len(keys) > 1}

    # -- deployment -------------------------------------------------------------------------------------------
    def export(self, key=None):
        key = key or "net1"
        nets = [f"net{n + 1}" for n in range(len(self.nets))]
        paths = [k for n in range(len(self.nets)) for k in self.branch_keys(n)]
        if key not in nets + paths:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(nets + paths)}")
        if key in nets:
            return self.network_module(nets.index(key)).eval()
        n, j = divmod(paths.index(key), self.options.branches)
        if self.options.sample_diversity:
            return self.network_module(n, only_branch=j).eval()
        path = self.nets.export_branch(n, j)
        if self.transforms == 1:
            return path.eval()
        plain = build_model(self.options.models[n], self.num_classes, **self.options.model_options)
        plain = plain.to(next(path.parameters()).device)
        state = path.state_dict()
        for name in ("head.fc.weight", "head.fc.bias"):
            state[name] = state[name][j::self.transforms]
        plain.load_state_dict(state)
        return plain.eval()

    def network_module(self, n: int, only_branch: int | None = None) -> "CSSNetwork":
        """Network ``n`` (0-based) as a stand-alone :class:`CSSNetwork` with its trained weights, detached from the
        cohort (whatever its execution): all m branches, or only branch ``only_branch``."""
        return CSSNetwork(self.nets.export_network(n), self.transforms, self.options.sample_diversity, only_branch)


class CSSNetwork(nn.Module):
    """One CSS network as the paper evaluates it (eq. 3-4): the trunk's map F, branch j on A_j * F (quadrant mask j
    under SD), the K logits of transform j from branch j's joint classifier, and their mean over the branches (whose
    softmax is P_i). With ``only_branch`` set, that branch's K logits alone (``predict``'s ``net{n}_branch{j}``)."""

    def __init__(self, net, transforms: int, masked: bool, only_branch: int | None = None):
        super().__init__()
        self.net, self.transforms, self.masked = net, transforms, masked
        self.branches = list(range(len(net.branches))) if only_branch is None else [only_branch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.net.trunk(x)
        masks = quadrant_masks(len(self.net.branches), shared.shape[-2], shared.shape[-1], shared.device,
                               shared.dtype) if self.masked else None
        logits = []
        for j in self.branches:
            z = self.net.branches[j](shared * masks[j] if self.masked else shared)
            logits.append(z[:, j::self.transforms] if self.transforms > 1 else z)
        return torch.stack(logits).float().mean(0)
