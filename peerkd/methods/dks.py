"""DKS: Sun, Yao, Zhou, Zhang, "Deeply-supervised Knowledge Synergy", CVPR 2019, as winycg/Self-KD-Lib runs it on
CIFAR (``methods/dks.py``, ``models/resnet.py`` ``CIFAR_ResNet18_dks``, ``main.py``; held against that code in
``tests/golden/test_selfkdlib_dks.py``).

One backbone plus auxiliary supervision branches attached to its intermediate stages. A branch starting after stage
``k`` of an ``S``-stage backbone is its own copy of the stages ``k+1 .. S`` (each possibly with fewer blocks) and its
own classifier head; the backbone's own head is the last classifier. With ``z_0`` the backbone's logits and
``z_1 .. z_B`` the branches', the loss of one step is

    L = w_ce * sum_j CE(z_j, y) + w_syn * sum_j sum_{k != j} T^2 KL(softmax(sg(z_k) / T) || softmax(z_j / T))

over all ``j, k`` in ``0 .. B``: every classifier is supervised by the labels and learns from every other one (the
paper's pairwise "knowledge synergy"), the teaching side detached (``sg``). The backbone's logits ``z_0`` are what
is evaluated and deployed.

Readings, with their evidence (Self-KD-Lib at ede3062d1193626da2bc8a1ceba535d84fb0a08c):

- The branches: ``models/resnet.py`` ``CIFAR_ResNet18_dks`` is ``CIFAR_ResNet(PreActBlock, [2, 2, 2, 2],
  branch_layers=[[1, 2], [2]])``: one branch after ``layer2`` (``layer3_head2``: 1 block of 256 channels, stride 2;
  ``layer4_head2``: 2 blocks of 512, stride 2; ``fc_head2``) and one after ``layer3`` (``layer4_head1``: 2 blocks
  of 512; ``fc_head1``), the blocks the backbone's own (``_make_layer`` of the same block type), each branch pooled
  by the same global average pooling. ``branch_blocks`` is that list: one entry per branch, the block count of each
  stage it copies; the number of entries says where it starts (``S - len``). Built here from a fresh network of the
  same factory (so the copies start from the model's own initialisation, PyTorch's default for ``preact_resnet18``
  as in the reference), its stages cut to their first ``n`` blocks (the first block carries the stride and the
  channel change, so the shapes stay those of the backbone; a cut that does not keep a stage's output shape, as
  in a VGG whose stages are single layers, is refused at build by one dry run). peerkd's ``parts`` do not fit:
  ``self_distillation`` / ``stage_adapters`` build BYOT's adapters (a bottleneck or separable convolutions bringing a
  map to the deepest map's shape), ``branching`` shares one trunk among *identical* tails; DKS's branches start at
  different stages with their own block counts.
- The loss: ``methods/dks.py`` ``DKS``: ``loss_cls += criterion_cls(output, targets)`` for every output and
  ``loss_div += criterion_div(output, output_counterpart.detach())`` for every ordered pair of different outputs;
  ``main.py``: ``criterion_cls = nn.CrossEntropyLoss()``, ``criterion_div = DistillKL(args.T)`` with ``--T`` 4,
  ``loss = loss_cls + loss_div``: both weights 1 (``--weight-cls`` / ``--weight-kd`` are not read by DKS).
  ``utils.py`` ``DistillKL``: ``kl_div(log_softmax(y_s / T), softmax(y_t / T), reduction='batchmean') * T**2``,
  which is ``peerkd.losses.kd_kl``. With a mixed batch the CE is the mixture of the two labels' (``hard_ce``).
- Evaluation: ``main.py`` ``test`` scores ``logit[0]``, the backbone's; so ``predict`` gives ``net`` only, and the
  branches (``branch{k}``, the branch starting after stage ``k``) with ``predict_branches``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl
from peerkd.models import build_model


class AuxiliaryBranch(nn.Module):
    """Copies of a backbone's stages ``start ..`` (cut to ``blocks`` blocks each) and its own classifier head."""

    def __init__(self, fresh: nn.Module, start: int, blocks: list[int]):
        super().__init__()
        self.start = start  # 0-based index of the first stage copied: the branch reads stage ``start - 1``'s map
        stages = []
        for offset, count in enumerate(blocks):
            index = start + offset
            stage = fresh.stages[index]
            length = len(stage) if isinstance(stage, nn.Sequential) else 1
            if not 1 <= count <= length:
                raise ConfigError(f"method.branch_blocks: stage {index + 1} has {length} block(s) to copy "
                                  f"(1..{length}), got {count}")
            if count < length:
                if not isinstance(stage, nn.Sequential):
                    raise ConfigError(f"method.branch_blocks: stage {index + 1} is not a sequence of blocks; "
                                      "it can only be copied whole")
                stage = nn.Sequential(*list(stage)[:count])
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        self.head = fresh.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


@register_method("dks")
class DKS(Method):
    """Deeply-supervised Knowledge Synergy (Sun et al. 2019): auxiliary branches on the intermediate stages, every
    classifier learning from the labels and from every other classifier."""

    @dataclass
    class Options:
        model: str = "preact_resnet18"  # the backbone; Self-KD-Lib's CIFAR_ResNet18 is peerkd's preact_resnet18
        model_options: dict = field(default_factory=dict)  # keyword arguments of the backbone's factory
        branch_blocks: list[list[int]] = field(default_factory=lambda: [[1, 2], [2]])  # one list per branch: the
        # block count of each backbone stage it copies, the last stages; [[1, 2], [2]] = CIFAR_ResNet18_dks's
        # branch_layers (a branch after stage 2: 1 + 2 blocks; one after stage 3: 2 blocks)
        temperature: float = 4.0  # T of the pairwise KL (main.py --T default 4), with the T^2 factor of DistillKL
        ce_weight: float = 1.0  # weight of the summed CE of all classifiers (Self-KD-Lib: loss_cls, weight 1)
        synergy_weight: float = 1.0  # weight of the summed pairwise KL (Self-KD-Lib: loss_div, weight 1)
        predict_branches: bool = False  # also score every branch (branch{k}); the code scores the backbone only

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # branches read the intermediate stages' maps

    def __init__(self, options, task):
        super().__init__(options, task)
        self.backbone = build_model(options.model, task.num_classes, key="method.model", **options.model_options)
        depth = len(self.backbone.stages)
        if not options.branch_blocks:
            raise ConfigError("method.branch_blocks: DKS needs at least one auxiliary branch")
        branches = []
        for blocks in options.branch_blocks:
            if not 1 <= len(blocks) < depth:
                raise ConfigError(f"method.branch_blocks: a branch copies 1..{depth - 1} of the last stages of "
                                  f"the {depth}-stage backbone, got {blocks}")
            fresh = build_model(options.model, task.num_classes, **options.model_options)
            branches.append(AuxiliaryBranch(fresh, depth - len(blocks), list(blocks)))
        self.branches = nn.ModuleList(branches)
        self._check_branch_shapes(task)

    @torch.no_grad()
    def _check_branch_shapes(self, task) -> None:
        """Refuse a cut that changes a stage's output (a stage whose modules are layers rather than blocks, e.g. a
        VGG's): one dry run in eval mode (BN statistics untouched), each branch stage's map against the backbone's."""
        modes = [(m, m.training) for m in (self.backbone, *self.branches)]
        for module, _ in modes:
            module.eval()
        device = next(self.backbone.parameters()).device
        maps = self.backbone.forward_stages(torch.zeros(1, task.in_channels, task.image_size, task.image_size,
                                                        device=device))
        try:
            for branch, blocks in zip(self.branches, self.options.branch_blocks):
                x = maps[branch.start - 1]
                for offset, stage in enumerate(branch.stages):
                    x = stage(x)
                    index = branch.start + offset
                    if x.shape != maps[index].shape:
                        raise ConfigError(f"method.branch_blocks: {blocks} cuts stage {index + 1} of "
                                          f"{self.options.model} to a map of shape {tuple(x.shape[1:])}, not the "
                                          f"stage's {tuple(maps[index].shape[1:])}; copy that stage whole")
        finally:
            for module, training in modes:
                module.train(training)

    def branch_keys(self) -> list[str]:
        """``branch{k}``: the branch starting after (1-based) stage ``k``."""
        return [f"branch{branch.start}" for branch in self.branches]

    def all_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's logits, then each branch's (in ``branch_blocks`` order)."""
        maps = self.backbone.forward_stages(x)
        logits = [self.backbone.head(maps[-1])]
        logits += [branch(maps[branch.start - 1]) for branch in self.branches]
        return logits

    def forward(self, batch) -> StepOutput:
        logits = self.all_logits(batch.view(0))
        t = self.options.temperature
        ce = sum(hard_ce(z, batch) for z in logits)
        synergy = sum(kd_kl(z, other.detach(), t)
                      for j, z in enumerate(logits) for k, other in enumerate(logits) if k != j)
        loss = self.options.ce_weight * ce + self.options.synergy_weight * synergy
        return StepOutput(loss, {"ce": ce.detach(), "synergy": synergy.detach()})

    def predict(self, x):
        if not self.options.predict_branches:
            return {"net": self.backbone(x)}
        logits = self.all_logits(x)
        return {"net": logits[0], **dict(zip(self.branch_keys(), logits[1:]))}

    def export(self, key=None):
        if key not in (None, "net"):
            raise KeyError(f"cannot export '{key}': only the backbone 'net' is a plain network (a branch needs the "
                           "backbone's early stages)")
        return copy.deepcopy(self.backbone).eval()
