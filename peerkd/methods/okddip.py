"""OKDDip: Chen, Mei, Wang, Feng, Chen, "Online Knowledge Distillation with Diverse Peers", AAAI 2020.

m branches: m - 1 auxiliary peers and one group leader (the last branch, the model that is deployed). Two-level
distillation:

    L = sum_{i<m} CE(z_i, y) + CE(z_gl, y)
        + w(e) * [ alpha * sum_{i<m} T^2 KL(t_i || q_i) + beta * T^2 KL(t_avg || q_gl) ] + gamma * L_cd

with ``t_i = sum_j a_ij z_j`` the attention-weighted target of peer i (``a_ij = softmax_j(<W_q h_i, W_k h_j>)``
over the auxiliary peers' pooled features ``h``, itself included), ``t_avg`` the mean of the auxiliary peers'
logits, every KL at temperature T on the softened distributions.

Readings (from the authors' published code where the paper is silent):

- branch-based: stem + stages before ``split_at`` shared; ``split_at`` unset branches the last stage (their ResNets
  give every branch its own stage 3 + classifier); ``network_based: true`` gives m independent networks;
- the targets are not detached (their KL loss does not detach the teacher), so the attention projections learn
  through the KL and the peers also receive gradient through the targets; ``target_gradient: weights`` detaches
  the logits inside the targets and keeps only the attention (or gate / FFM) trainable through them;
- ``t_avg`` is the mean of the auxiliary peers' *logits* (their ``torch.mean`` over branches), not probabilities;
- the distillation weight ramps up as ``w(e) = exp(-5 (1 - e/80)^2)`` over the first 80 epochs (their
  ``consistency_weight``); ``rampup_epochs: 0`` turns it off. alpha = beta = 1, T = 3, m = 4 as in their defaults;
- the projections map the pooled feature to ``feature_dim / 8`` dimensions without bias (their ``factor = 8``).

Held against DefangChen/OKDDip-AAAI2020 (``train_GL.py`` with ``models/model_cifar/resnet_GL.py``) step for step:
outputs, loss and every gradient at epochs 0, 40 and 100 (``tests/golden/test_okddip.py``). Their KL adds 1e-7 to
the teacher's probabilities; peerkd's does not (at most ``classes x 1e-7`` of the KL's gradient). On their VGG
(``vgg_GL.py``) every branch classifier has dropout 0.5: ``model_options: {dropout: 0.5}`` on ``vgg16_okddip``.

``target`` (gate / attention / ffm / mean) and ``cd_weight`` make this one family with MDE (``peerkd.methods.mde``):
MDE is this class with the FFM target, beta = 2 and the CD loss.

``predict`` keys: ``branch0 .. branch{m-2}`` (auxiliary peers), ``leader``, ``ensemble`` (the mean of the
auxiliary peers' probabilities). ``export()`` gives the leader as a plain model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl, mean_probs_logits
from peerkd.methods.parts.multibranch import (
    BranchGroup,
    CdProduct,
    TargetBuilder,
    TargetGradient,
    build_target_builder,
    classifier_diversification,
    peer_targets,
    sigmoid_rampup,
)


@register_method("okddip")
class OKDDip(Method):
    """OKDDip (Chen et al. AAAI 2020): attention-weighted peer targets plus a group leader distilled from the peers."""

    @dataclass
    class Options:
        model: str = "resnet32"  # backbone of every branch (a registered model name)
        model_options: dict = field(default_factory=dict)  # keyword arguments for the backbone's factory
        branches: int = 4  # m: m - 1 auxiliary peers + 1 group leader (4 in OKDDip's and MDE's CIFAR runs)
        split_at: int | None = None  # stages shared by the branches; None: all but the last (their ResNet code)
        network_based: bool = False  # True: m independent networks (OKDDip's network-based setting)
        target: TargetBuilder = "attention"  # how the peers' targets are built: attention (OKDDip), gate (ONE), ffm,
        # mean
        attention_reduction: int = 8  # query/key dimension = feature_dim / this (their factor = 8)
        gate_bn_relu: bool = True  # gate target only: BN + ReLU between FC and softmax, as ONE's code
        fusion_blocks: int = 1  # ffm target only: conv-BN-ReLU blocks in the fusion module
        fusion_kernel: int = 1  # ffm target only: conv kernel size (1: a 1x1 fusion conv; 3: the earlier reading)
        fusion_reduction: int = 16  # ffm target only: conv output channels = one branch's channels / this (1: keep)
        temperature: float = 3.0  # T of every KL term (their default 3)
        peer_weight: float = 1.0  # alpha: weight of the first-level KL (peers <- their targets); their alpha = 1
        leader_weight: float = 1.0  # beta: weight of the second-level KL (leader <- t_avg); 1 in their code
        cd_weight: float = 0.0  # gamma: classifier-diversification loss weight (0: OKDDip has none)
        cd_product: CdProduct = "outer"  # reading of W_i^T W_j: outer (vec(W_i) vec(W_j)^T), feature (d x d), class
        # (C x C)
        cd_include_leader: bool = True  # the leader's classifier enters L_cd (eq. 5 of MDE sums over all m)
        target_gradient: TargetGradient = "full"  # "full": targets not detached (their code); "weights": logits
        # detached
        rampup_epochs: float = 80.0  # epochs of the sigmoid ramp-up of the KL weight (their length = 80); 0: off

    @classmethod
    def model_requirements(cls, options):
        # branch-based: trunk + tails of the backbone's stages; network-based: the attention reads pooled features
        # (MDE's feature-fusion target also each network's last map)
        whole_networks = options.network_based and options.target != "ffm"
        return {"model": ("features",) if whole_networks else ("stages",)}

    def __init__(self, options, task):
        super().__init__(options, task)
        if options.branches < 3:
            raise ConfigError("method.branches: two-level distillation needs at least 2 peers and a leader (>= 3)")
        self.group = BranchGroup(options.model, task.num_classes, options.branches, options.split_at,
                                 options.network_based, options.model_options)
        self.peers = list(range(options.branches - 1))
        self.leader = options.branches - 1
        self.target_builder = build_target_builder(
            options.target, self.group, len(self.peers), gate_bn_relu=options.gate_bn_relu,
            attention_reduction=options.attention_reduction, fusion_blocks=options.fusion_blocks,
            fusion_kernel=options.fusion_kernel, fusion_reduction=options.fusion_reduction)
        self.register_buffer("distill_scale", torch.tensor(sigmoid_rampup(0, options.rampup_epochs)))

    def on_epoch_start(self, epoch, epochs):
        self.distill_scale.fill_(sigmoid_rampup(epoch, self.options.rampup_epochs))

    def cd_loss(self) -> torch.Tensor:
        weights = self.group.classifier_weights()
        if not self.options.cd_include_leader:
            weights = weights[:self.leader]
        return classifier_diversification(weights, self.options.cd_product)

    def forward(self, batch) -> StepOutput:
        opts, temp = self.options, self.options.temperature
        out = self.group(batch.view(0))
        detach = opts.target_gradient == "weights"
        targets, _ = peer_targets(self.target_builder, out, self.peers, detach_logits=detach)
        ce = torch.stack([hard_ce(z, batch) for z in out.logits])
        peer_kl = torch.stack([kd_kl(out.logits[i], targets[:, k], temp) for k, i in enumerate(self.peers)])
        t_avg = torch.stack([out.logits[i].float() for i in self.peers]).mean(0)
        leader_kl = kd_kl(out.logits[self.leader], t_avg.detach() if detach else t_avg, temp)
        distill = opts.peer_weight * peer_kl.sum() + opts.leader_weight * leader_kl
        loss = ce.sum() + self.distill_scale * distill
        logs = {"ce": ce.sum().detach(), "kl_peers": peer_kl.sum().detach(), "kl_leader": leader_kl.detach(),
                "distill_scale": self.distill_scale.detach().clone()}
        if opts.cd_weight:
            cd = self.cd_loss()
            loss = loss + opts.cd_weight * cd
            logs["cd"] = cd.detach()
        return StepOutput(loss, logs)

    def predict(self, x):
        logits = self.group(x).logits
        preds = {f"branch{i}": logits[i] for i in self.peers}
        preds["leader"] = logits[self.leader]
        preds["ensemble"] = mean_probs_logits([logits[i] for i in self.peers])
        return preds

    def diversity_groups(self):
        peers = [f"branch{i}" for i in self.peers]
        return {"peers": peers, "branches": peers + ["leader"]}

    def export(self, key=None):
        key = key or "leader"
        valid = [f"branch{i}" for i in self.peers] + ["leader"]
        if key not in valid:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(valid)}")
        return self.group.export(self.leader if key == "leader" else int(key[len("branch"):]))
