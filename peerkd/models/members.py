"""Identical members behind one interface, however they execute: ``build_members(modules, execution)``.

A branched network's tails, a cohort's networks (:mod:`peerkd.methods.cohort`; there they may also differ, and then
run unfused), a network-based group's whole networks, a head tree's stage segments and classifiers: each is a group
of identical modules that a method runs side by side. The method asks the group, never a member:

- ``run(inputs)``: every member's ``forward``;
- ``outputs(inputs)``: for members made of stages and a classifier head (branch tails, backbones), every member's
  last feature map, pooled feature and logits (:class:`MemberOutputs`);
- ``member_parameter(j, name)``: member j's parameter ``name`` (a view of the fused tensor when fused, so gradients
  reach it); ``member_state_dict(j)`` and ``export(j)``: member j's state and a plain copy of it;

``inputs`` is one tensor that every member reads or a list with one tensor per member. The execution (``method.fuse``
as the method resolved it: :mod:`peerkd.methods.execution`) picks the class:

- "off": :class:`MemberList`, an ``nn.ModuleList`` that calls its members one after another (the reference);
- "streams": :class:`StreamedMembers`, the same with member i on CUDA side stream i (:mod:`peerkd.models.streams`);
- "on": :class:`FusedMembers`, one :class:`~peerkd.models.fused.FusedCopies` on peer-major stacked channels.

All three keep the ModuleList's state_dict keys (``{j}.<name>``; the fused group converts on save and on load), so a
checkpoint saved under one execution loads under another, and all compute the same maths (fused: up to the order of
floating-point sums).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from peerkd.models.fused import FusedCopies, FusionError, split_member
from peerkd.models.streams import StreamedModels

EXECUTIONS = ("off", "on", "streams")  # what build_members accepts ("auto" is resolved by the method first)

Inputs = torch.Tensor | Sequence[torch.Tensor]  # one input for every member, or one per member


@dataclass
class MemberOutputs:
    """Per member (lists in member order): what a stages + classifier-head module computes on its way to logits."""

    maps: list[torch.Tensor]  # the last stage's feature map (the input itself for a member without stages)
    features: list[torch.Tensor]  # the pooled feature, the classifier's input (``head.features``)
    logits: list[torch.Tensor]  # the head's logits from that feature (``head.classify``)


def head_outputs(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(last map, pooled feature, logits)`` of a module with ``forward_stages`` and a classifier ``head``; the
    pooling runs once."""
    stages = module.forward_stages(x)
    last = stages[-1] if stages else x
    features = module.head.features(last)
    return last, features, module.head.classify(features)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor stored channels-last (the trainer's CUDA layout), which the stacks below keep."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def repeat_channels(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``(B, copies*C, ...)``: ``x`` repeated along channels, in ``x``'s memory format (``repeat`` alone returns a
    contiguous tensor, which a channels-last convolution would convert back)."""
    if is_channels_last(x):
        return x.movedim(1, -1).repeat(1, 1, 1, copies).movedim(-1, 1)
    return x.repeat(1, copies, *[1] * (x.dim() - 2))


def _per_member(inputs: Inputs, count: int) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs] * count
    inputs = list(inputs)
    if len(inputs) != count:
        raise ValueError(f"{count} members, {len(inputs)} inputs")
    return inputs


def _collect(triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> MemberOutputs:
    maps, features, logits = (list(column) for column in zip(*triples))
    return MemberOutputs(maps, features, logits)


class MemberList(nn.ModuleList):
    """Execution "off": the members one after another, each called as a module (its hooks run)."""

    def _each(self, fn: Callable[[nn.Module, torch.Tensor], object], inputs: Inputs) -> list:
        return [fn(member, x) for member, x in zip(self, _per_member(inputs, len(self)))]

    def run(self, inputs: Inputs) -> list[torch.Tensor]:
        """Every member's ``forward`` on its input."""
        return self._each(lambda member, x: member(x), inputs)

    def outputs(self, inputs: Inputs) -> MemberOutputs:
        """Every member's last map, pooled feature and logits (see :func:`head_outputs`)."""
        return _collect(self._each(head_outputs, inputs))

    def member_parameter(self, member: int, name: str) -> nn.Parameter:
        return self[member].get_parameter(name)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return self[member].state_dict()

    def export(self, member: int) -> nn.Module:
        """A plain copy of member ``member``, detached from the group."""
        return copy.deepcopy(self[member])


class StreamedMembers(MemberList, StreamedModels):
    """Execution "streams": member i runs on CUDA side stream i (one after another on other devices). The fork and
    join are :meth:`StreamedModels.run`'s; the group's interface is :class:`MemberList`'s (first in the bases)."""

    def _each(self, fn: Callable[[nn.Module, torch.Tensor], object], inputs: Inputs) -> list:
        return StreamedModels.run(self, _per_member(inputs, len(self)), fn)


class FusedMembers(nn.Module):
    """Execution "on": the members as one :class:`FusedCopies` whose every layer is P members wide. Inputs are stacked
    along channels (a shared input repeated, per-member inputs concatenated) and outputs split back into views.

    Its state_dict has the ModuleList's keys (``{j}.<name>``), converted on save and on load.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        self.fused = FusedCopies(list(modules))
        self.register_state_dict_post_hook(_fused_to_member_keys)
        self.register_load_state_dict_pre_hook(_member_to_fused_keys)

    def __len__(self) -> int:
        return self.fused.copies

    def _stack(self, inputs: Inputs) -> torch.Tensor:
        """``(B, P*C, ...)``: member j's input in channels ``j*C .. (j+1)*C - 1``."""
        if isinstance(inputs, torch.Tensor):
            return repeat_channels(inputs, self.fused.copies)
        return torch.cat(_per_member(inputs, self.fused.copies), 1)  # cat keeps the inputs' channels-last layout

    def _split(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        """``(B, P*K, ...)`` -> P views ``(B, K, ...)``, member order."""
        copies = self.fused.copies
        return list(stacked.view(stacked.shape[0], copies, stacked.shape[1] // copies, *stacked.shape[2:]).unbind(1))

    def run(self, inputs: Inputs) -> list[torch.Tensor]:
        """Every member's ``forward`` on its input, as one fused forward."""
        return self._split(self.fused(self._stack(inputs)))

    def run_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """The fused forward on inputs already stacked peer-major ``(B, P*C, ...)``, its output left stacked
        ``(B, P*K, ...)``: for a caller that builds the stack itself or feeds it to another group without splitting."""
        return self.fused(stacked)

    def outputs(self, inputs: Inputs) -> MemberOutputs:
        """Every member's last map, pooled feature and logits, from one fused pass."""
        return MemberOutputs(*(self._split(t) for t in head_outputs(self.fused.body, self._stack(inputs))))

    def member_parameter(self, member: int, name: str) -> torch.Tensor:
        """Member ``member``'s part of fused parameter ``name``: a view, so gradients flow into the fused tensor."""
        return split_member(self.fused.body.get_parameter(name), member, self.fused.copies)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return self.fused.member_state_dict(member)

    def export(self, member: int) -> nn.Module:
        """Member ``member`` as a plain module of its own type, detached from the group."""
        return self.fused.export(member)


def _fused_to_member_keys(module: FusedMembers, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: ``{prefix}fused.body.<name>`` -> ``{prefix}{j}.<name>`` for every member j, member by
    member as a ModuleList lists them (the group's keys are the last ones written when the hook runs)."""
    fused_prefix = prefix + "fused.body."
    copies = module.fused.copies
    fused = [(key[len(fused_prefix):], state.pop(key)) for key in [k for k in state if k.startswith(fused_prefix)]]
    for member in range(copies):
        for name, value in fused:
            state[f"{prefix}{member}.{name}"] = split_member(value, member, copies).detach().clone()


def _member_to_fused_keys(module: FusedMembers, state: dict, prefix: str, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: the members' ``{prefix}{j}.<name>`` concatenated into ``{prefix}fused.body.<name>``
    (0-dim tensors, such as BatchNorm's step count, are shared: member 0's is taken)."""
    copies = module.fused.copies
    names = list(module.fused.body.state_dict().keys())
    if not any(f"{prefix}0.{name}" in state for name in names):
        return  # already in the fused layout (or absent: load_state_dict reports the missing keys)
    for name in names:
        parts = [state.pop(f"{prefix}{member}.{name}", None) for member in range(copies)]
        if any(part is None for part in parts):
            missing_keys.extend(f"{prefix}{member}.{name}" for member, part in enumerate(parts) if part is None)
            continue
        state[f"{prefix}fused.body.{name}"] = parts[0] if parts[0].dim() == 0 else torch.cat(parts)


def build_members(modules: Sequence[nn.Module], execution: str = "off") -> nn.Module:
    """A group of identical ``modules`` executing as ``execution`` ("off", "on" or "streams"). Members fusion cannot
    translate (or that are not identical) run as "off", with a warning."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
    modules = list(modules)
    if execution == "streams":
        return StreamedMembers(modules)
    if execution == "on" and len(modules) > 1:
        try:
            return FusedMembers(modules)
        except FusionError as err:
            warnings.warn(f"method.fuse: {err}; these members run unfused", stacklevel=2)
    return MemberList(modules)


__all__ = ["EXECUTIONS", "FusedMembers", "MemberList", "MemberOutputs", "StreamedMembers", "build_members",
           "head_outputs"]
