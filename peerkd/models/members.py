"""Identical members behind one interface, however they execute: ``build_members(modules, execution)``.

A branched network's tails, a cohort's networks (:mod:`peerkd.methods.parts.cohort`; there they may also differ, and
then run unfused), a network-based group's whole networks, a head tree's stage segments and classifiers: each is a group
of identical modules that a method runs side by side. The method asks the group, never a member:

- ``run(inputs)``: every member's ``forward``;
- ``outputs(inputs)``: for members made of stages and a classifier head (branch tails, backbones), every member's
  last feature map, pooled feature and logits (:class:`MemberOutputs`);
- ``member_parameter(j, name)``: member j's parameter ``name`` (a view of the fused tensor when fused, so gradients
  reach it); ``member_state_dict(j)`` and ``export(j)``: member j's state and a plain copy of it;

``inputs`` is one tensor that every member reads or a list with one tensor per member. The execution (the current
:func:`~peerkd.models.execution.member_execution`, "separate" outside any: :mod:`peerkd.models.execution`) picks the
class:

- "separate": :class:`MemberList`, an ``nn.ModuleList`` that calls its members one after another (the reference);
- "streams": :class:`StreamedMembers`, the same with member i on CUDA side stream i (:mod:`peerkd.models.streams`);
- "grouped": :class:`FusedMembers`, one :class:`~peerkd.models.fused.FusedCopies` on peer-major stacked channels;
- "vmap": :class:`VmappedMembers`, the members' tensors stacked (``torch.func.stack_module_state``) and one member's
  forward mapped over them (``torch.func.vmap`` of ``functional_call``): the general path, for identical members of
  any module type (timm and torchvision blocks, which the fusion translator does not know).

All four keep the ModuleList's state_dict keys (``{j}.<name>``; the fused and the vmapped groups convert on save and
on load), so a checkpoint saved under one execution loads under another, and all compute the same maths (fused and
vmapped: up to the order of floating-point sums; vmapped dropout: other random masks).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from peerkd.models.execution import check_member_execution, current_member_execution
from peerkd.models.fused import FusedCopies, FusionError, split_member
from peerkd.models.streams import StreamedModels

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
    """Execution "separate": the members one after another, each called as a module (its hooks run)."""

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
    """Execution "grouped": the members as one :class:`FusedCopies` whose every layer is P members wide. Inputs are
    stacked along channels (a shared input repeated, per-member inputs concatenated) and outputs split back into views.

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


class VmappedMembers(nn.Module):
    """Execution "vmap": P identical members of any type as one vectorised forward.

    ``torch.func.stack_module_state`` stacks every parameter and buffer of the members along a new first dimension;
    the forward is ``vmap(functional_call(member, (params_j, buffers_j), x_j))`` over j, so each of P members runs
    with its own tensors in one batched pass (vmap turns a convolution with per-member weights into one grouped
    convolution). BatchNorm in training mode works: its running statistics are stacked buffers, updated in place per
    member under vmap (tested against separate modules: outputs, gradients and statistics agree). Dropout draws
    independent masks per member (``randomness="different"``), as separate modules do, though not the same numbers.
    The stacked tensors are stored flat, ``(P, numel)``, so a channels-last conversion of the method leaves them alone
    (a 5-d stacked convolution weight cannot be channels-last); the state_dict keys are the ModuleList's
    (``{j}.<name>``), converted on save and on load, so checkpoints move between executions.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        from torch.func import stack_module_state

        modules = list(modules)
        if len({type(m) for m in modules}) > 1 or len({tuple((k, tuple(v.shape)) for k, v in m.state_dict().items())
                                                       for m in modules}) > 1:
            raise FusionError("vmap needs identical members (same type and tensor shapes)")
        params, buffers = stack_module_state(modules)
        self.copies = len(modules)
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.shapes = {name: tuple(t.shape[1:]) for name, t in {**params, **buffers}.items()}
        self.params = nn.ParameterList([nn.Parameter(params[n].detach().reshape(self.copies, -1).clone())
                                        for n in self.param_names])
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[name].reshape(self.copies, -1).clone())
        # one member on the meta device: the function vmap maps (functional_call supplies every tensor)
        object.__setattr__(self, "_base", copy.deepcopy(modules[0]).to("meta"))
        object.__setattr__(self, "_template", copy.deepcopy(modules[0]).cpu())
        self.register_state_dict_post_hook(_stacked_to_member_keys)
        self.register_load_state_dict_pre_hook(_member_to_stacked_keys)

    def __len__(self) -> int:
        return self.copies

    def train(self, mode: bool = True):
        super().train(mode)
        self._base.train(mode)  # the mapped member's BatchNorm / dropout follow the group's mode
        return self

    def _stacked(self) -> dict[str, torch.Tensor]:
        tensors = {n: p.view(self.copies, *self.shapes[n]) for n, p in zip(self.param_names, self.params)}
        for i, name in enumerate(self.buffer_names):
            tensors[name] = getattr(self, f"buffer{i}").view(self.copies, *self.shapes[name])
        return tensors

    def _map(self, fn: Callable[[nn.Module, torch.Tensor], object], inputs: Inputs):
        from torch.func import functional_call, vmap

        base, names = self._base, self.param_names

        def one(tensors, x):
            params = {n: tensors[n] for n in names}
            buffers = {n: t for n, t in tensors.items() if n not in params}
            return functional_call(_Apply(base, fn), ({f"member.{k}": v for k, v in params.items()},
                                                      {f"member.{k}": v for k, v in buffers.items()}), (x,))

        shared = isinstance(inputs, torch.Tensor)
        xs = inputs if shared else torch.stack(_per_member(inputs, self.copies))
        return vmap(one, in_dims=(0, None if shared else 0), randomness="different")(self._stacked(), xs)

    def run(self, inputs: Inputs) -> list[torch.Tensor]:
        """Every member's ``forward`` on its input, as one vectorised forward."""
        return list(self._map(lambda member, x: member(x), inputs).unbind(0))

    def outputs(self, inputs: Inputs) -> MemberOutputs:
        """Every member's last map, pooled feature and logits (see :func:`head_outputs`), vectorised."""
        maps, features, logits = self._map(head_outputs, inputs)
        return MemberOutputs(list(maps.unbind(0)), list(features.unbind(0)), list(logits.unbind(0)))

    def member_parameter(self, member: int, name: str) -> torch.Tensor:
        """Member ``member``'s parameter ``name``: a view of the stacked tensor, so gradients flow into it."""
        return self.params[self.param_names.index(name)][member].view(self.shapes[name])

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return {name: t[member].clone() for name, t in self._stacked().items()}

    def export(self, member: int) -> nn.Module:
        """Member ``member`` as a plain module of its own type, detached from the group."""
        model = copy.deepcopy(self._template)
        model.load_state_dict(self.member_state_dict(member))
        return model.to(self.params[0].device).train(self.training)


class _Apply(nn.Module):
    """``fn(member, x)`` as a module's forward, for ``functional_call`` (the member's keys under ``member.``)."""

    def __init__(self, member: nn.Module, fn: Callable[[nn.Module, torch.Tensor], object]):
        super().__init__()
        self.member = member
        self.fn = fn

    def forward(self, x: torch.Tensor):
        return self.fn(self.member, x)


def _stacked_to_member_keys(module: VmappedMembers, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the stacked ``params.{i}`` / ``buffer{i}`` -> ``{prefix}{j}.<name>`` per member j, in a
    member's own key order (the ModuleList's)."""
    stacked = module._stacked()
    for key in [k for k in state if k.startswith(prefix + "params.") or k.startswith(prefix + "buffer")]:
        state.pop(key)
    names = [name for name in module._template.state_dict() if name in stacked]
    for member in range(module.copies):
        for name in names:
            state[f"{prefix}{member}.{name}"] = stacked[name][member].detach().clone()


def _member_to_stacked_keys(module: VmappedMembers, state: dict, prefix: str, local_metadata, strict, missing_keys,
                            unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: the members' ``{prefix}{j}.<name>`` stacked flat into the group's tensors."""
    if f"{prefix}0.{(module.param_names + module.buffer_names)[0]}" not in state:
        return
    targets = [(n, f"params.{i}") for i, n in enumerate(module.param_names)]
    targets += [(n, f"buffer{i}") for i, n in enumerate(module.buffer_names)]
    for name, key in targets:
        parts = [state.pop(f"{prefix}{member}.{name}", None) for member in range(module.copies)]
        if any(part is None for part in parts):
            missing_keys.extend(f"{prefix}{member}.{name}" for member, part in enumerate(parts) if part is None)
            continue
        state[prefix + key] = torch.stack([part.reshape(-1) for part in parts])


def build_members(modules: Sequence[nn.Module], execution: str | None = None) -> nn.Module:
    """A group of identical ``modules`` executing as ``execution`` (one of ``MEMBER_EXECUTIONS``; None: the current
    :func:`~peerkd.models.execution.member_execution`). Members that cannot be grouped or vmapped (not identical, or a
    module type fusion does not know) run separately, with a warning."""
    execution = check_member_execution(current_member_execution() if execution is None else execution)
    modules = list(modules)
    if execution == "streams":
        return StreamedMembers(modules)
    if execution == "vmap" and len(modules) > 1:
        try:
            return VmappedMembers(modules)
        except FusionError as err:
            warnings.warn(f"trainer.members vmap: {err}; these members run separately", stacklevel=2)
    if execution == "grouped" and len(modules) > 1:
        try:
            return FusedMembers(modules)
        except FusionError as err:
            warnings.warn(f"trainer.members grouped: {err}; these members run separately", stacklevel=2)
    return MemberList(modules)


__all__ = ["FusedMembers", "MemberList", "MemberOutputs", "StreamedMembers", "VmappedMembers",
           "build_members", "head_outputs"]
