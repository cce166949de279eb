"""Shared parts of the multi-branch methods (ONE, CL, OKDDip, MDE): the branch group, the pluggable target builders,
the classifier-diversification loss, gradient rescaling and the distillation ramp-up.

A *branch group* is either one network with a shared trunk and m branch tails (``branched``: the branch-based
setting) or m whole networks sharing nothing (OKDDip's network-based setting). Either way one call gives, per branch,
the last feature map, the pooled feature and the logits, plus the trunk's output (the gate's input). The identical
tails (or networks) execute as the run's ``trainer.members`` says (:mod:`peerkd.models.execution`); the group reads
them only through the member-group interface (:mod:`peerkd.models.members`), so nothing here changes with it.

A *target builder* turns the branches' outputs into one soft target per peer, given as logits:

- ``gate``      ONE (Lan et al. 2018): global pool of the trunk's map, FC, BatchNorm, ReLU, softmax -> one weight per
                peer; every peer gets the same target ``sum_i w_i z_i``.
- ``attention`` OKDDip (Chen et al. 2020): query / key projections (no bias, shared by the peers) of each peer's
                pooled feature; peer i's target is ``sum_j softmax_j(q_i . k_j) z_j`` (itself included).
- ``ffm``       MDE's Feature Fusion Module (Li et al., paper 001, eq. 4): the peers' last-stage maps concatenated,
                conv-BN-ReLU, global pool, FC, softmax -> one weight per peer; every peer gets ``sum_i w_i z_i``.
- ``mean``      no parameters: the plain average of the peers' logits (the "simple aggregation" baseline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.methods.parts.rampup import sigmoid_rampup  # noqa: F401  (re-exported for ONE / OKDDip)
from peerkd.methods.parts.branching import build_branched
from peerkd.models import build_model
from peerkd.models.members import build_members

TargetBuilder = Literal["gate", "attention", "ffm", "mean"]  # the target builders above (an Options choice)
TargetGradient = Literal["full", "weights"]  # "full": targets not detached; "weights": the peers' logits in them
# detached (the weighting module still learns)


# ----------------------------------------------------------------------------------------------- gradient rescaling

class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` on the way back (CL's backprop rescaling)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGradient.apply(x, scale) if scale != 1.0 else x


# ----------------------------------------------------------------------------------------------- the branch group

@dataclass
class GroupOutput:
    trunk: torch.Tensor  # the shared trunk's output map (the image itself in the network-based setting)
    maps: list[torch.Tensor]  # each branch's last feature map
    features: list[torch.Tensor]  # each branch's pooled feature (the classifier's input)
    logits: list[torch.Tensor]


class BranchGroup(nn.Module):
    """m branches of backbone ``model``: a shared trunk (stages before ``split_at``) and m tails, or m whole networks
    when ``network_based``. ``split_at=None`` branches the last stage (ONE's and OKDDip's ResNets share stem, stage 1
    and stage 2 and give each branch its own stage 3 and classifier)."""

    def __init__(self, model: str, num_classes: int, branches: int, split_at: int | None = None,
                 network_based: bool = False, model_options: dict | None = None):
        super().__init__()
        model_options = dict(model_options or {})
        if branches < 2:
            raise ConfigError(f"method.branches: needs at least 2 branches, got {branches}")
        probe = build_model(model, num_classes, key="method.model", **model_options)
        self.network_based = network_based
        self.count = branches
        self.map_channels = getattr(probe, "stage_channels", [None])[-1]  # the ffm target's input (needs stages)
        self.feature_dim = probe.head.in_features
        if network_based:
            self.nets = build_members([probe] + [build_model(model, num_classes, **model_options)
                                                 for _ in range(branches - 1)])
            self.trunk_channels = 3
        else:
            self.net = build_branched(model, num_classes, -1 if split_at is None else split_at, branches,
                                      model_options)
            self.trunk_channels = self.net.trunk_channels

    def forward(self, x: torch.Tensor, trunk_gradient_scale: float = 1.0) -> GroupOutput:
        if self.network_based:
            trunk, out = x, self.nets.outputs(x)
        else:
            trunk = scale_gradient(self.net.trunk(x), trunk_gradient_scale)
            out = self.net.tail_outputs(trunk)
        return GroupOutput(trunk, out.maps, out.features, out.logits)

    def classifier_weights(self) -> list[torch.Tensor]:
        """Every branch's classifier weight ``(classes, feature_dim)``, gradients flowing (MDE's CD loss)."""
        if self.network_based:
            return [self.nets.member_parameter(j, "head.fc.weight") for j in range(self.count)]
        return self.net.classifier_weights()

    def export(self, j: int) -> nn.Module:
        if self.network_based:
            return self.nets.export(j).eval()
        return self.net.export_branch(j).eval()


# ----------------------------------------------------------------------------------------------- target builders

class GateTarget(nn.Module):
    """ONE's gate: ``w = softmax(relu(BN(FC(pool(trunk)))))``; BN and ReLU as in ONE's code, off with ``bn_relu``."""

    shared_target = True

    def __init__(self, in_channels: int, peers: int, bn_relu: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_channels, peers)
        self.bn = nn.BatchNorm1d(peers) if bn_relu else None

    def weights(self, out: GroupOutput, peers: list[int]) -> torch.Tensor:
        scores = self.fc(torch.flatten(F.adaptive_avg_pool2d(out.trunk, 1), 1))
        if self.bn is not None:
            scores = F.relu(self.bn(scores))
        return F.softmax(scores.float(), dim=-1)  # (B, P)


class AttentionTarget(nn.Module):
    """OKDDip's attention: ``a_ij = softmax_j(<W_q h_i, W_k h_j>)`` over the peers' pooled features ``h``."""

    shared_target = False

    def __init__(self, feature_dim: int, reduction: int = 8):
        super().__init__()
        projected = max(1, feature_dim // reduction)
        self.query = nn.Linear(feature_dim, projected, bias=False)
        self.key = nn.Linear(feature_dim, projected, bias=False)

    def weights(self, out: GroupOutput, peers: list[int]) -> torch.Tensor:
        h = torch.stack([out.features[i] for i in peers], 1)  # (B, P, D)
        energy = torch.bmm(self.query(h), self.key(h).transpose(1, 2))  # (B, P, P)
        return F.softmax(energy.float(), dim=-1)


class FusionTarget(nn.Module):
    """MDE's Feature Fusion Module: concatenated last-stage maps -> ``blocks`` x (k x k conv, BN, ReLU) -> global pool
    -> FC -> softmax over the peers.

    The paper (Li et al. 2020, sec. 3.2 and Fig. 2) gives a "center block made of several convolutional layers, batch
    normalization and ReLU", its last layer an FC, and no sizes; it presents FFM as lighter than OKDDip's self-attention
    ("needs two fully connected layers ... which increases the complexity of time and space") and the method as
    "without additional training and inference costs". Default reading: a 1x1 conv from the ``P * C`` concatenated
    channels to ``C / reduction`` (``reduction`` 16), so the module has ``P C^2 / 16`` conv weights: fewer than
    OKDDip's two ``C -> C / 8`` projections (``C^2 / 4``) for the paper's P = 3 peers, and a few percent of any MDE
    backbone. ``kernel=3, reduction=1`` is the earlier reading (a 3x3 conv keeping C channels: 9 P C^2 weights,
    113 M on Xception / ResNeXt-50, five times the backbone)."""

    shared_target = True

    def __init__(self, map_channels: int, peers: int, blocks: int = 1, kernel: int = 1, reduction: int = 16):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"method.fusion_kernel: must be an odd positive size (1, 3, ...), got {kernel}")
        if reduction < 1:
            raise ConfigError(f"method.fusion_reduction: must be 1 or more, got {reduction}")
        width = max(1, map_channels // reduction)
        layers, channels = [], map_channels * peers
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, width, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.fuse = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, peers)
        for m in self.fuse.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def weights(self, out: GroupOutput, peers: list[int]) -> torch.Tensor:
        fused = self.fuse(torch.cat([out.maps[i] for i in peers], 1))
        return F.softmax(self.fc(torch.flatten(F.adaptive_avg_pool2d(fused, 1), 1)).float(), dim=-1)


class MeanTarget(nn.Module):
    """The plain mean of the peers' logits (no parameters)."""

    shared_target = True

    def weights(self, out: GroupOutput, peers: list[int]) -> torch.Tensor:
        batch = out.logits[0].shape[0]
        return out.logits[0].new_full((batch, len(peers)), 1.0 / len(peers), dtype=torch.float32)


def build_target_builder(kind: TargetBuilder, group: BranchGroup, peers: int, *, gate_bn_relu: bool = True,
                         attention_reduction: int = 8, fusion_blocks: int = 1, fusion_kernel: int = 1,
                         fusion_reduction: int = 16) -> nn.Module:
    if kind == "gate":
        if group.network_based:
            raise ConfigError("method.target: the ONE gate reads the shared trunk; the network-based setting has "
                               "none (use attention, ffm or mean)")
        return GateTarget(group.trunk_channels, peers, gate_bn_relu)
    if kind == "attention":
        return AttentionTarget(group.feature_dim, attention_reduction)
    if kind == "ffm":
        return FusionTarget(group.map_channels, peers, fusion_blocks, fusion_kernel, fusion_reduction)
    return MeanTarget()


def peer_targets(builder: nn.Module, out: GroupOutput, peers: list[int], detach_logits: bool = False):
    """``(targets, weights)``: ``targets`` is ``(B, P, C)``, the target logits of each peer; ``weights`` is ``(B, P)``
    for a shared target or ``(B, P, P)`` (row i: peer i's weights over the peers). With ``detach_logits`` the peers'
    logits inside the targets carry no gradient (only the weighting module does)."""
    weights = builder.weights(out, peers)
    z = torch.stack([out.logits[i].float() for i in peers], 1)  # (B, P, C)
    if detach_logits:
        z = z.detach()
    if weights.dim() == 2:
        shared = (weights.unsqueeze(-1) * z).sum(1)  # (B, C)
        return shared.unsqueeze(1).expand_as(z), weights
    return torch.bmm(weights, z), weights


# ----------------------------------------------------------------------------------------------- CD loss

CdProduct = Literal["outer", "feature", "class"]  # readings of MDE's W_i^T W_j (see classifier_diversification)


def classifier_diversification(weights: list[torch.Tensor], product: CdProduct = "outer") -> torch.Tensor:
    """MDE's eq. 5, ``L_cd = sum_{i<j} |W_i^T W_j|``, ``|.|`` the sum of the absolute entries, summed over the pairs.

    ``weights`` are the classifiers' ``nn.Linear.weight`` matrices ``(C, d)`` (biases do not enter). What ``W_i`` is
    in ``W_i^T W_j`` the paper does not say; three readings:

    - ``"outer"`` (the default): ``W_i`` is the classifier's weights as one row vector ``vec(W_i)`` of ``C d``
      entries (PyTorch's ``w.view(1, -1)``), so ``W_i^T W_j`` is the ``Cd x Cd`` outer product and
      ``|W_i^T W_j| = sum_kl |w_ik| |w_jl| = ||W_i||_1 ||W_j||_1`` (computed in that closed form, never built).
      It is the only reading under which the paper's gamma range behaves as its Fig. 3 says: on ResNet-32 /
      CIFAR-100 at initialisation ``L_cd ~ 1e6`` (m = 4), so gamma = 5e-8 gives a gradient on the classifier
      weights ~ 4e-3 of CE's (a real batch of 128; about 1.7 x weight decay's: a regulariser that acts, as
      Table 6 says it does), gamma = 1e-4 ~ 7 x CE's (the CD term dominates: "too large ... will not converge")
      and gamma = 1e-10 ~ 1e-5 (inert: "too small ... ineffective"). Measured by ``tests/methods/test_mde.py``.
    - ``"feature"``: ``W_i^T W_j`` with the ``(C, d)`` layout read literally, a ``d x d`` matrix. ``L_cd ~ 1e3``;
      its gradient at gamma = 5e-8 is ~ 5e-6 of CE's (~500 x below weight decay) and stays below 1 % of CE's at
      the figure's largest gamma = 1e-4, so the whole Fig. 3 range would be inert.
    - ``"class"``: ``W_i W_j^T`` (``C x C``: dot products of class vectors); the same scale as ``"feature"``.
    """
    total = weights[0].new_zeros((), dtype=torch.float32)
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            a, b = weights[i].float(), weights[j].float()
            if product == "outer":
                total = total + a.abs().sum() * b.abs().sum()
            else:
                total = total + (a.t() @ b if product == "feature" else a @ b.t()).abs().sum()
    return total
