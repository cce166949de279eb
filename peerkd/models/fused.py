"""Fusion: P identical modules (whole networks, branch tails, stage segments, heads) run as one module.

Online KD multiplies a network's kernel launches by its peers and branches; most of a CIFAR step is launch overhead,
not arithmetic. Here the P copies become one module whose every layer is P times as wide: the copies' channels are
stacked peer-major (``[peer 0's C channels, peer 1's C channels, ...]``), every convolution is grouped so that a
copy only sees its own channels, one BatchNorm normalises all copies' channels (BatchNorm is per channel, so this is
numerically the separate BatchNorms), and the classifiers run as one batched matrix product. The maths is that of
the separate modules; only the launch count changes.

The translation is module by module (:func:`fuse_module`): ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear`` are
widened, channel-wise modules (activations, pooling, flatten, dropout, identity) are kept, containers
(``nn.Sequential``, ``nn.ModuleList``) and the known blocks of this library (CIFAR ``BasicBlock`` with conv or
identity shortcuts, WRN ``WideBlock`` and ``FinalActivation``, ``ClassifierHead``, ``BranchTail``, and any
``Backbone`` that keeps the base class's forward) are copied with their children translated: their ``forward`` only
applies channel-wise functions (ReLU, addition, dropout) to their children's outputs, so it stays correct on stacked
channels. Any other module type is refused with its name; :func:`register_channelwise` admits a new block whose
forward is channel-wise.

Every fused parameter and buffer is the members' tensors concatenated along dim 0 (conv and linear weights are kept
as ``(P * out, ...)``), so splitting it back (:func:`split_member`) is one ``chunk`` per tensor; the fused state_dict
keeps the member's key names. :class:`FusedCopies` holds the fused module and cuts members back out of it; the
member-group interface over it (inputs stacked and outputs split, ModuleList state_dict keys) is
:class:`peerkd.models.members.FusedMembers`.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.cifar_resnet import BasicBlock
from peerkd.models.wrn import FinalActivation, WideBlock

class FusionError(ValueError):
    """The modules cannot be fused (different architectures, or a module type the translator does not know)."""


# ------------------------------------------------------------------------------------------------ fused leaves

class FusedConv2d(nn.Conv2d):
    """P copies of a ``Conv2d(in, out, groups=g)`` as one ``Conv2d(P*in, P*out, groups=P*g)``."""

    @classmethod
    def from_members(cls, convs: list[nn.Conv2d]) -> "FusedConv2d":
        first, copies = convs[0], len(convs)
        if first.padding_mode != "zeros":
            raise FusionError(f"Conv2d with padding_mode='{first.padding_mode}' is not supported (only 'zeros')")
        # skip_init: no random initialisation (overwritten below), so fusing draws no random numbers and a run
        # seeded alike initialises every module built after its cohort alike, fused or not
        fused = nn.utils.skip_init(cls, first.in_channels * copies, first.out_channels * copies, first.kernel_size,
                                   first.stride, first.padding, first.dilation, first.groups * copies,
                                   first.bias is not None, device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([c.weight for c in convs]))
            if first.bias is not None:
                fused.bias.copy_(torch.cat([c.bias for c in convs]))
        return fused


class FusedBatchNorm2d(nn.BatchNorm2d):
    """P copies of a ``BatchNorm2d(C)`` as one ``BatchNorm2d(P*C)``: statistics are per channel, so identical."""

    @classmethod
    def from_members(cls, norms: list[nn.BatchNorm2d]) -> "FusedBatchNorm2d":
        first = norms[0]
        counts = {int(n.num_batches_tracked) for n in norms if n.num_batches_tracked is not None}
        if first.momentum is None and len(counts) > 1:
            raise FusionError("BatchNorm2d with momentum=None (cumulative averages) needs equal num_batches_tracked "
                              f"in every member, got {sorted(counts)}")
        fused = cls(first.num_features * len(norms), first.eps, first.momentum, first.affine,
                    first.track_running_stats, device=_device_of(first), dtype=_dtype_of(first))
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(first, name) is not None:
                    getattr(fused, name).copy_(torch.cat([getattr(n, name) for n in norms]))
            if first.num_batches_tracked is not None:
                fused.num_batches_tracked.copy_(first.num_batches_tracked)  # one step count: they train in lockstep
        return fused


class FusedLinear(nn.Module):
    """P copies of a ``Linear(in, out)`` as one batched product: ``(B, P*in) -> (B, P*out)``.

    ``weight`` is ``(P*out, in)`` and ``bias`` ``(P*out,)`` (the members' tensors concatenated), viewed as
    ``(P, out, in)`` for ``torch.baddbmm``.
    """

    def __init__(self, copies: int, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.empty(copies * out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(copies * out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_members(cls, linears: list[nn.Linear]) -> "FusedLinear":
        first = linears[0]
        fused = cls(len(linears), first.in_features, first.out_features, first.bias is not None,
                    first.weight.device, first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([m.weight for m in linears]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias for m in linears]))
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        per_copy = x.reshape(batch, self.copies, self.in_features).transpose(0, 1)  # (P, B, in)
        weight_t = self.weight.view(self.copies, self.out_features, self.in_features).transpose(1, 2)  # (P, in, out)
        if self.bias is None:
            out = torch.bmm(per_copy, weight_t)
        else:
            out = torch.baddbmm(self.bias.view(self.copies, 1, self.out_features), per_copy, weight_t)
        return out.transpose(0, 1).reshape(batch, self.copies * self.out_features)

    def extra_repr(self) -> str:
        return f"copies={self.copies}, in_features={self.in_features}, out_features={self.out_features}"


# ---------------------------------------------------------------------------------------------- the translator

# leaves that widen: member type -> builder from the list of members
_WIDENED: dict[type, Callable[[list], nn.Module]] = {
    nn.Conv2d: FusedConv2d.from_members,
    nn.BatchNorm2d: FusedBatchNorm2d.from_members,
    nn.Linear: FusedLinear.from_members,
}

# stateless modules that act on every channel alike: kept as they are
_CHANNELWISE_LEAVES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten,
)


def _basic_block_check(block: BasicBlock) -> None:
    if block.pad_channels:
        raise FusionError("BasicBlock with the zero-padding shortcut (shortcut='A') pads channels, which would mix "
                          "stacked peers; use shortcut='B' (conv) or run the cohort unfused")


def _flatten_start_check(flatten: nn.Flatten) -> None:
    if flatten.start_dim != 1:
        raise FusionError(f"Flatten(start_dim={flatten.start_dim}) is not channel-wise; only start_dim=1 is")


# composite modules whose forward only applies channel-wise functions to their children's outputs, with an optional
# check of the instance (raising FusionError) for configurations that are not channel-wise
_CHANNELWISE_COMPOSITES: dict[type, Callable[[nn.Module], None] | None] = {
    nn.Sequential: None, nn.ModuleList: None, BasicBlock: _basic_block_check, WideBlock: None,
    FinalActivation: None, ClassifierHead: None,  # BranchTail registers itself (peerkd.models.branched)
}


def _plain_backbone(kind: type) -> bool:
    """A :class:`Backbone` that keeps the base class's ``forward`` / ``forward_stages`` (stem, stages, head one after
    another) is channel-wise whenever its children are (a subclass that overrides them is refused)."""
    return (issubclass(kind, Backbone) and kind.forward is Backbone.forward
            and kind.forward_stages is Backbone.forward_stages)


def register_channelwise(cls: type, check: Callable[[nn.Module], None] | None = None) -> type:
    """Admit module type ``cls`` to fusion: its forward must apply only channel-wise functions (elementwise
    activations, additions, per-channel pooling) to its children's outputs, never mix or reshape channels.
    ``check(instance)`` may raise :class:`FusionError` for configurations that are not. Usable as a decorator."""
    _CHANNELWISE_COMPOSITES[cls] = check
    return cls


def fuse_module(members: list[nn.Module]) -> nn.Module:
    """One module computing all ``members`` on peer-major stacked channels; they must have the same structure."""
    first = members[0]
    kind = type(first)
    for other in members[1:]:
        if type(other) is not kind:
            raise FusionError(f"cannot fuse a {kind.__name__} with a {type(other).__name__}: the cohort is not "
                              "identical (run it unfused)")
        if kind in _WIDENED or kind in _CHANNELWISE_LEAVES:
            if repr(other) != repr(first):
                raise FusionError(f"cannot fuse {first!r} with {other!r}: the cohort is not identical (run it unfused)")
    if kind in _WIDENED:
        return _WIDENED[kind](members)
    if kind in _CHANNELWISE_LEAVES:
        if kind is nn.Flatten:
            _flatten_start_check(first)
        return copy.deepcopy(first)
    if kind not in _CHANNELWISE_COMPOSITES and not _plain_backbone(kind):
        raise FusionError(f"cannot fuse module type {kind.__module__}.{kind.__name__}: the fusion translator knows "
                          "Conv2d, BatchNorm2d, Linear, channel-wise activations and pooling, Sequential/ModuleList "
                          "and peerkd's blocks; register a channel-wise block with register_channelwise() or run "
                          "the cohort unfused")
    check = _CHANNELWISE_COMPOSITES.get(kind)
    if check is not None:
        for member in members:
            check(member)
    names = [name for name, _ in first.named_children()]
    for other in members[1:]:
        if [name for name, _ in other.named_children()] != names:
            raise FusionError(f"cannot fuse two {kind.__name__} with different children: the cohort is not "
                              "identical (run it unfused)")
        if dict(other.named_parameters(recurse=False)) or dict(other.named_buffers(recurse=False)):
            raise FusionError(f"{kind.__name__} holds its own parameters or buffers, which fusion cannot stack")
    if dict(first.named_parameters(recurse=False)) or dict(first.named_buffers(recurse=False)):
        raise FusionError(f"{kind.__name__} holds its own parameters or buffers, which fusion cannot stack")
    # same class and plain attributes (stride, dropout, ...), own copies of the hook dicts; children replaced below
    shell = object.__new__(kind)
    shell.__dict__.update({key: (dict(value) if isinstance(value, dict) else value)
                           for key, value in first.__dict__.items()})
    shell.__dict__.update(_modules={}, _parameters={}, _buffers={})
    for name in names:
        children = [getattr(member, name) for member in members]
        shell._modules[name] = None if children[0] is None else fuse_module(children)
    return shell


def split_member(tensor: torch.Tensor, member: int, copies: int) -> torch.Tensor:
    """Member ``member``'s part of a fused parameter, buffer or gradient (0-dim tensors are shared)."""
    return tensor if tensor.dim() == 0 else tensor.chunk(copies, 0)[member]


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter(module.parameters()), None)
    tensor = next(iter(module.buffers()), None) if tensor is None else tensor
    return None if tensor is None else tensor.device


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    tensor = next(iter(module.parameters()), None)
    return None if tensor is None else tensor.dtype


def _check_same_state_layout(members: list[nn.Module], what: str) -> None:
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in members]
    for i, other in enumerate(shapes[1:], 1):
        if other != shapes[0]:
            differing = sorted(k for k in set(other) | set(shapes[0]) if other.get(k) != shapes[0].get(k))
            raise FusionError(f"{what} {i} differs from {what} 0 (e.g. at '{differing[0]}'): the cohort is not "
                              "identical (run it unfused)")


class FusedCopies(nn.Module):
    """P identical modules of any kind :func:`fuse_module` translates (branch tails, stage segments, classifier
    heads, whole backbones) as one module ``body`` of the members' type working on peer-major stacked channels: where
    a member maps ``(B, C, ...)`` to ``(B, K, ...)``, ``body`` maps ``(B, P*C, ...)`` to ``(B, P*K, ...)``, with every
    method of the member (``forward_stages``, ``head.features``, ...) available on the stacked tensors.

    ``body``'s parameters and buffers carry a member's names (the members' tensors concatenated along dim 0), so a
    member's state, gradients and plain copy are cut out of them with :func:`split_member`.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 1:
            raise FusionError("FusedCopies needs at least one member")
        _check_same_state_layout(members, "member")
        self.copies = len(members)
        self.body = fuse_module(members)
        # a plain member kept out of the module tree (no parameters, no state_dict entries): export fills a copy
        object.__setattr__(self, "_template", copy.deepcopy(members[0]).cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s state_dict (the member's own key names), cut from the fused tensors."""
        return {key: split_member(value, member, self.copies).clone() for key, value in self.body.state_dict().items()}

    def member_grads(self, member: int) -> dict[str, torch.Tensor | None]:
        """Member ``member``'s gradients by parameter name (None where a parameter has none)."""
        return {name: None if p.grad is None else split_member(p.grad, member, self.copies)
                for name, p in self.body.named_parameters()}

    def export(self, member: int) -> nn.Module:
        """Member ``member`` as a plain module of its own type, with its trained weights and statistics."""
        if not 0 <= member < self.copies:
            raise IndexError(f"member {member} out of range: there are {self.copies}")
        model = copy.deepcopy(self._template)
        model.load_state_dict(self.member_state_dict(member))
        device = next(iter(self.parameters())).device
        return model.to(device).train(self.training)


__all__ = ["FusedBatchNorm2d", "FusedConv2d", "FusedCopies", "FusedLinear", "FusionError", "fuse_module",
           "register_channelwise", "split_member"]
