"""A shared trunk with several branch tails: ``branched(name, split_at=k, branches=m)``; ``k <= 0`` counts from the end.

The trunk is ``stem + stages[:k]`` of one backbone, each branch is ``stages[k:] + head`` of its own backbone built
by the same factory (so every branch starts from its own random initialisation). ``export_branch(j)`` gives a plain
registered model with the trunk's and branch ``j``'s weights, for deployment.

The tails are a member group (:mod:`peerkd.models.members`) executing as the current
:func:`~peerkd.models.execution.member_execution` says ("separate": one after another, "grouped": one fused module,
"streams": on CUDA side streams, "vmap": one vectorised forward); methods reach them only through ``tail_logits``,
``tail_outputs`` and ``classifier_weights``, so they never depend on the execution, and neither do the state_dict keys
(``branches.{j}.<name>``) or the exported models.
"""
from __future__ import annotations

import torch
from torch import nn

from peerkd.models.base import Backbone
from peerkd.models.execution import REFERENCE_EXECUTION, member_execution
from peerkd.models.fused import register_channelwise
from peerkd.models.members import Inputs, MemberOutputs, build_members
from peerkd.models.registry import build_model, model_label


@register_channelwise  # its forward runs its stages and head one after another: fusable
class BranchTail(nn.Module):
    """The part of a backbone after the split: its remaining stages and its head."""

    def __init__(self, backbone: Backbone, split_at: int):
        super().__init__()
        self.stages = nn.ModuleList(list(backbone.stages[split_at:]))
        self.head = backbone.head

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.forward_stages(x)
        return self.head(stages[-1] if stages else x)  # a split after the last stage leaves the tail a head alone


class BranchedNet(nn.Module):
    """A shared trunk and ``branches`` tails; the current member execution says how the identical tails run (see the
    module)."""

    def __init__(self, name: str, num_classes: int, split_at: int, branches: int, **model_kwargs):
        super().__init__()
        backbones = [build_model(name, num_classes, **model_kwargs) for _ in range(branches)]
        depth = len(backbones[0].stages)
        if split_at <= 0:  # counted from the end: -1 shares every stage but the last (the ONE / OKDDip / CSS split)
            split_at += depth
        if not 0 < split_at < depth + 1:
            raise ValueError(f"split_at must be in 1..{depth} (or -{depth - 1}..0 from the end) for "
                             f"{model_label(name)} ({depth} stages), got {split_at}")
        self.name, self.num_classes, self.split_at, self.model_kwargs = name, num_classes, split_at, model_kwargs
        first = backbones[0]
        self.stem = first.stem
        self.trunk_stages = nn.ModuleList(list(first.stages[:split_at]))
        self.branches = build_members([BranchTail(b, split_at) for b in backbones])
        self.trunk_channels = first.stage_channels[split_at - 1]
        self.stage_channels = list(first.stage_channels)
        self.feature_dim = first.head.in_features  # width of a tail's pooled feature

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.trunk_stages:
            x = stage(x)
        return x

    def tail_logits(self, inputs: Inputs) -> list[torch.Tensor]:
        """Every tail's logits; ``inputs`` is the trunk's map (shared) or a list with one map per tail."""
        return self.branches.run(inputs)

    def tail_outputs(self, inputs: Inputs) -> MemberOutputs:
        """Every tail's last feature map, pooled feature and logits; ``inputs`` as in :meth:`tail_logits`."""
        return self.branches.outputs(inputs)

    def classifier_weights(self) -> list[torch.Tensor]:
        """Every tail's classifier weight ``(classes, feature_dim)`` (the ``nn.Linear`` layout), gradients flowing."""
        return [self.branches.member_parameter(j, "head.fc.weight") for j in range(len(self.branches))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every branch."""
        return self.tail_logits(self.trunk(x))

    def plain(self) -> BranchedNet:
        """A copy of this network with separate tails (the reference execution, whatever this one's), for export."""
        with member_execution(REFERENCE_EXECUTION):
            net = BranchedNet(self.name, self.num_classes, self.split_at, len(self.branches), **self.model_kwargs)
        net.load_state_dict(self.state_dict())
        return net.to(next(self.parameters()).device).train(self.training)

    def export_branch(self, j: int) -> Backbone:
        model = build_model(self.name, self.num_classes, **self.model_kwargs)
        model.stem.load_state_dict(self.stem.state_dict())
        for i, stage in enumerate(self.trunk_stages):
            model.stages[i].load_state_dict(stage.state_dict())
        tail = self.branches.export(j)
        for i, stage in enumerate(tail.stages):
            model.stages[self.split_at + i].load_state_dict(stage.state_dict())
        model.head.load_state_dict(tail.head.state_dict())
        return model.to(next(self.parameters()).device)


def branched(name: str, num_classes: int, split_at: int, branches: int, **model_kwargs) -> BranchedNet:
    return BranchedNet(name, num_classes, split_at, branches, **model_kwargs)
