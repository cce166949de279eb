"""Several branched networks trained side by side (CSS's two networks) behind one interface:
``branched_cohort(names, num_classes, split_at, branches)``.

Why: a method with N identical branched networks (CSS: 2 x ResNet-110, 3 branches each) that runs them net by net
launches N trunks and N tail groups; most of a CIFAR step is launch overhead. Under the member execution "grouped"
(:func:`~peerkd.models.execution.member_execution`) and identical networks (one name; the options are common) the
cohort runs as :class:`FusedBranchedNets`: ONE fused member group of the N trunks (stem + trunk stages) and ONE fused
member group of all N*m tails (:mod:`peerkd.models.members`), so each layer is one wide kernel for the whole cohort.
Otherwise (one network, different networks, another execution, or networks fusion cannot translate, with a warning)
it is :class:`BranchedNets`, a list of :class:`~peerkd.models.branched.BranchedNet` that each run their tails as the
member execution says.

Both classes answer the same questions, so a method never sees the layout:

- ``branch_logits(x, branch_masks)``: every net's every branch's logits, ``logits[n][j]``; branch j of net n reads net
  n's trunk map, multiplied by ``branch_masks(map)[j]`` when ``branch_masks`` is given;
- ``export_branch(n, j)``: the plain backbone of net n's trunk + branch j;
- ``export_network(n)``: net n as a plain :class:`~peerkd.models.branched.BranchedNet` (separate tails);
- ``len(cohort)``: the number of networks.

Both have the state_dict keys of an ``nn.ModuleList`` of BranchedNets: ``{n}.stem.<name>``,
``{n}.trunk_stages.{i}.<name>``, ``{n}.branches.{j}.<name>``; the fused cohort converts its internal keys
(``trunks.{n}.stem`` / ``trunks.{n}.stages.{i}`` / ``tails.{n*m+j}``) on save and on load, so a checkpoint saved
under one execution loads under another. The maths is the same (fused: up to the order of floating-point sums).
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from peerkd.models.base import Backbone
from peerkd.models.branched import BranchedNet, branched
from peerkd.models.execution import current_member_execution, member_execution
from peerkd.models.fused import FusionError, register_channelwise
from peerkd.models.members import FusedMembers, is_channels_last, repeat_channels

BranchMasks = Callable[[torch.Tensor], torch.Tensor]  # a trunk map (B, C, H, W) -> (m, 1 or C, H, W) multipliers


@register_channelwise  # its forward runs the stem and the stages one after another: fusable
class BranchTrunk(nn.Module):
    """A branched network's shared part, the stem and the trunk stages, as one module (the member fusion stacks)."""

    def __init__(self, stem: nn.Module, stages: nn.ModuleList):
        super().__init__()
        self.stem = stem
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class BranchedNets(nn.ModuleList):
    """The networks one after another, each a :class:`BranchedNet` running its own tails (its own execution)."""

    def branch_logits(self, x: torch.Tensor, branch_masks: BranchMasks | None = None) -> list[list[torch.Tensor]]:
        """``logits[n][j]``: branch j of net n on net n's trunk map (times ``branch_masks(map)[j]`` when given)."""
        logits = []
        for net in self:
            shared = net.trunk(x)
            if branch_masks is None:
                logits.append(net.tail_logits(shared))
            else:
                masks = branch_masks(shared)
                logits.append(net.tail_logits([shared * masks[j] for j in range(len(net.branches))]))
        return logits

    def export_branch(self, net: int, branch: int) -> Backbone:
        return self[net].export_branch(branch)

    def export_network(self, net: int) -> BranchedNet:
        """Network ``net`` as a plain BranchedNet (separate tails), detached from the cohort."""
        return self[net].plain()


class FusedBranchedNets(nn.Module):
    """N identical branched networks as two fused member groups: ``trunks`` (N copies of stem + trunk stages) and
    ``tails`` (all N*m tails, net-major: tail ``n*m + j`` is net n's branch j). Its state_dict has the keys of an
    ``nn.ModuleList`` of the networks (see the module)."""

    def __init__(self, nets: Sequence[BranchedNet]):
        super().__init__()
        nets = list(nets)
        if len(nets) < 2:
            raise FusionError("a fused cohort needs at least two networks")
        self.count, self.branches = len(nets), len(nets[0].branches)
        self.trunks = FusedMembers([BranchTrunk(net.stem, net.trunk_stages) for net in nets])
        self.tails = FusedMembers([tail for net in nets for tail in net.branches])
        # a plain network kept out of the module tree (no parameters, no state_dict entries): export fills a copy
        object.__setattr__(self, "_template", copy.deepcopy(nets[0]).cpu())
        self.register_state_dict_post_hook(_cohort_to_net_keys)
        self.register_load_state_dict_pre_hook(_net_to_cohort_keys)

    def __len__(self) -> int:
        return self.count

    def branch_logits(self, x: torch.Tensor, branch_masks: BranchMasks | None = None) -> list[list[torch.Tensor]]:
        """``logits[n][j]`` as :meth:`BranchedNets.branch_logits`: one fused trunk pass, the tails' inputs built by
        one kernel (a broadcast copy, or one masked product), one fused pass of all tails."""
        nets, m = self.count, self.branches
        maps = self.trunks.run_stacked(repeat_channels(x, nets))  # (B, N*C, H, W), net-major
        logits = self.tails.run_stacked(_branch_inputs(maps, nets, m, branch_masks))  # (B, N*m*K), tail-major
        per_net = logits.view(logits.shape[0], nets, m, logits.shape[1] // (nets * m)).unbind(1)
        return [list(tails.unbind(1)) for tails in per_net]

    def net_state_dict(self, net: int) -> dict[str, torch.Tensor]:
        """Network ``net``'s state_dict with a BranchedNet's keys (``stem.*``, ``trunk_stages.*``, ``branches.*``)."""
        prefix = f"{net}."
        return {key[len(prefix):]: value for key, value in self.state_dict().items() if key.startswith(prefix)}

    def export_network(self, net: int) -> BranchedNet:
        """Network ``net`` as a plain BranchedNet (separate tails), detached from the cohort."""
        plain = copy.deepcopy(self._template)
        plain.load_state_dict(self.net_state_dict(net))
        return plain.to(next(self.parameters()).device).train(self.training)

    def export_branch(self, net: int, branch: int) -> Backbone:
        """The plain backbone of net ``net``'s trunk + branch ``branch`` (:meth:`BranchedNet.export_branch`)."""
        return self.export_network(net).export_branch(branch)


def _branch_inputs(maps: torch.Tensor, nets: int, branches: int, branch_masks: BranchMasks | None) -> torch.Tensor:
    """The tails' stacked input ``(B, N*m*C, H, W)`` (tail ``n*m + j`` reads net n's map, times
    ``branch_masks(map)[j]`` when given) from the trunks' stacked maps ``(B, N*C, H, W)``, written by one kernel in
    the maps' memory format: the work runs on a view with the channels contiguous (NCHW, or NHWC for channels-last),
    where splitting them into (N, m, C) and merging back are views."""
    last = is_channels_last(maps)
    work = maps.movedim(1, -1) if last else maps  # channels at ``dim``, contiguous
    dim = work.dim() - 1 if last else 1
    per_net = work.unflatten(dim, (nets, 1, work.shape[dim] // nets))  # (.., N, 1, C, ..)
    if branch_masks is None:
        stacked = per_net.expand(*per_net.shape[:dim + 1], branches, *per_net.shape[dim + 2:]).contiguous()
    else:
        masks = branch_masks(maps[:, :maps.shape[1] // nets])  # (m, 1 or C, H, W): one net's map decides the shape
        if last:  # -> (1, H, W, 1, m, 1 or C)
            masks = masks.movedim(1, -1).movedim(0, -2).unsqueeze(0).unsqueeze(3)
        else:  # -> (1, 1, m, 1 or C, H, W)
            masks = masks.view(1, 1, *masks.shape)
        stacked = per_net * masks  # (.., N, m, C, ..)
    stacked = stacked.flatten(dim, dim + 2)
    return stacked.movedim(-1, 1) if last else stacked


_TRUNK_KEY = re.compile(r"trunks\.(\d+)\.(stem|stages)\.(.*)")
_TAIL_KEY = re.compile(r"tails\.(\d+)\.(.*)")
_NET_KEY = re.compile(r"(\d+)\.(stem|trunk_stages|branches)\.(.*)")


def _cohort_to_net_keys(module: FusedBranchedNets, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: ``trunks.{n}.stem|stages.*`` and ``tails.{n*m+j}.*`` (the member groups' keys) ->
    ``{n}.stem|trunk_stages.*`` and ``{n}.branches.{j}.*``, net by net as a ModuleList of BranchedNets lists them (the
    cohort's keys are the last ones written when the hook runs)."""
    per_net: list[list[tuple[str, torch.Tensor]]] = [[] for _ in range(module.count)]
    tails: list[list[tuple[str, torch.Tensor]]] = [[] for _ in range(module.count)]
    for key in [k for k in state if k.startswith(prefix)]:
        local = key[len(prefix):]
        if trunk := _TRUNK_KEY.fullmatch(local):
            net, part, rest = trunk.groups()
            name = "stem" if part == "stem" else "trunk_stages"
            per_net[int(net)].append((f"{net}.{name}.{rest}", state.pop(key)))
        elif tail := _TAIL_KEY.fullmatch(local):
            net, branch = divmod(int(tail.group(1)), module.branches)
            tails[net].append((f"{net}.branches.{branch}.{tail.group(2)}", state.pop(key)))
    for net in range(module.count):
        for local, value in per_net[net] + tails[net]:  # tails listed member by member: branch order kept
            state[prefix + local] = value


def _net_to_cohort_keys(module: FusedBranchedNets, state: dict, prefix: str, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: ``{n}.stem|trunk_stages.*`` and ``{n}.branches.{j}.*`` -> the member groups' keys
    ``trunks.{n}.stem|stages.*`` and ``tails.{n*m+j}.*`` (which their own hooks then fuse); other keys are left for
    load_state_dict to report."""
    for key in [k for k in state if k.startswith(prefix)]:
        found = _NET_KEY.fullmatch(key[len(prefix):])
        if found is None or int(found.group(1)) >= module.count:
            continue
        net, part, rest = int(found.group(1)), found.group(2), found.group(3)
        if part == "branches":
            branch, _, name = rest.partition(".")
            if not branch.isdigit() or int(branch) >= module.branches:
                continue
            state[f"{prefix}tails.{net * module.branches + int(branch)}.{name}"] = state.pop(key)
        else:
            state[f"{prefix}trunks.{net}.{'stem' if part == 'stem' else 'stages'}.{rest}"] = state.pop(key)


def branched_cohort(names: Sequence[str], num_classes: int, split_at: int, branches: int,
                    **model_kwargs) -> BranchedNets | FusedBranchedNets:
    """One :func:`~peerkd.models.branched.branched` network per name. Under the member execution "grouped" with two or
    more identical networks (one name) the cohort is fused (:class:`FusedBranchedNets`); otherwise every network runs
    its tails as the member execution says (:class:`BranchedNets`). Networks fusion cannot translate run separately,
    with a warning."""
    names = list(names)
    if current_member_execution() == "grouped" and len(names) > 1 and len(set(names)) == 1:
        with member_execution("separate"):  # plain networks, which the fused cohort takes apart
            nets = [branched(name, num_classes, split_at, branches, **model_kwargs) for name in names]
        try:
            return FusedBranchedNets(nets)
        except FusionError as err:
            warnings.warn(f"trainer.members grouped: {err}; these networks run separately", stacklevel=2)
            return BranchedNets(nets)
    return BranchedNets([branched(name, num_classes, split_at, branches, **model_kwargs) for name in names])


__all__ = ["BranchTrunk", "BranchedNets", "FusedBranchedNets", "branched_cohort"]
