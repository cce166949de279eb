"""Helpers for methods whose members are whole networks (vanilla cohorts, KD students, DML peers, KDCL).

A method builds its members with ``build_cohort(..., fuse=...)`` and runs them with ``run_cohort(models, x)``; it
never needs to know whether they run as separate modules or as one fused module (:mod:`peerkd.models.fused`). A
fused cohort (:class:`FusedModels`) keeps the state_dict keys of the plain ``nn.ModuleList`` (``{i}.<name>``), so
checkpoints load into a method built with or without fusion, and ``export_member`` returns plain models either way.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from peerkd.losses import mean_probs_logits
from peerkd.models import build_model
from peerkd.methods.execution import resolved
from peerkd.models.fused import FusedCohort, FusionError, fuse, same_architecture
from peerkd.models.streams import StreamedModels


class FusedModels(nn.Module):
    """Identical members run as one :class:`FusedCohort`, standing in for their ``nn.ModuleList``.

    Its state_dict has the ModuleList's keys (``{i}.<name>``, per member), converted on save and on load, so the
    checkpoint of a fused run is the checkpoint of the same run unfused.
    """

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.fused = fuse(models)
        self.register_state_dict_post_hook(_fused_to_member_keys)
        self.register_load_state_dict_pre_hook(_member_to_fused_keys)

    def __len__(self) -> int:
        return self.fused.copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(P, B, K)`` from one shared input ``(B, C, H, W)`` or one per member ``(P, B, C, H, W)``."""
        return self.fused(x)

    def export(self, member: int) -> nn.Module:
        return self.fused.export(member)


def _fused_to_member_keys(module: FusedModels, state: dict, prefix: str, local_metadata) -> None:
    fused_prefix = prefix + "fused."
    fused_keys = [key for key in state if key.startswith(fused_prefix)]
    if not fused_keys:
        return
    cohort: FusedCohort = module.fused
    for key in fused_keys:
        value = state.pop(key)
        name = key[len(fused_prefix):]
        for member in range(cohort.copies):
            part = value if value.dim() == 0 else value.chunk(cohort.copies, 0)[member]
            state[f"{prefix}{member}.{name}"] = part if value.dim() == 0 else part.detach().clone()
    for key in [key for key in state if key.startswith(fused_prefix)]:
        del state[key]


def _member_to_fused_keys(module: FusedModels, state: dict, prefix: str, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs) -> None:
    cohort: FusedCohort = module.fused
    names = list(cohort.state_dict().keys())
    if not any(f"{prefix}0.{name}" in state for name in names):
        return  # already in the fused layout (or absent: load_state_dict reports the missing keys)
    for name in names:
        parts = [state.pop(f"{prefix}{member}.{name}", None) for member in range(cohort.copies)]
        if any(part is None for part in parts):
            missing_keys.extend(f"{prefix}{member}.{name}" for member, part in enumerate(parts) if part is None)
            continue
        state[f"{prefix}fused.{name}"] = parts[0] if parts[0].dim() == 0 else torch.cat(parts)


def build_cohort(names: list[str], num_classes: int, model_options: dict, fuse: str = "off") -> nn.Module:
    """The members named ``names``: an ``nn.ModuleList`` (``fuse`` "off"), a :class:`StreamedModels` ("streams") or,
    with identical members, a :class:`FusedModels` ("on"); a heterogeneous cohort, or one with a module fusion does
    not know, runs unfused. "auto" is "off" unless the trainer settled it (:mod:`peerkd.methods.execution`)."""
    if not names:
        from peerkd.config import ConfigError
        raise ConfigError("method.models: name at least one model (see `peerkd list models`)")
    try:
        models = nn.ModuleList([build_model(name, num_classes, **model_options) for name in names])
    except KeyError as err:
        from peerkd.config import ConfigError
        raise ConfigError(f"method.models: {err.args[0]}") from None
    fuse = resolved(fuse)
    if fuse == "off" or len(models) < 2:
        return models
    if fuse == "streams":
        return StreamedModels(list(models))
    if len(set(names)) > 1 or not same_architecture(list(models)):
        warnings.warn(f"method.fuse: the cohort {names} is not identical; it runs unfused", stacklevel=2)
        return models
    try:
        return FusedModels(list(models))
    except FusionError as err:
        warnings.warn(f"method.fuse: {err}; the cohort runs unfused", stacklevel=2)
        return models


def run_cohort(models: nn.Module, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Every member's logits: ``x`` is one input for all (``(B, C, H, W)``) or one per member (a list, or a tensor
    ``(P, B, C, H, W)``); fused or not, the result is the same list of ``(B, K)`` logits."""
    per_member = isinstance(x, (list, tuple)) or x.dim() == 5
    if isinstance(models, FusedModels):
        return list(models(torch.stack(list(x)) if isinstance(x, (list, tuple)) else x).unbind(0))
    if isinstance(models, StreamedModels):
        return models.run([x[i] if per_member else x for i in range(len(models))])
    return [model(x[i] if per_member else x) for i, model in enumerate(models)]


def peer_keys(count: int) -> list[str]:
    return [f"peer{i}" for i in range(count)]


def cohort_predictions(logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``peer{i}`` for each member and, for two or more, ``ensemble`` (the mean of their probabilities)."""
    out = {key: z for key, z in zip(peer_keys(len(logits)), logits)}
    if len(logits) > 1:
        out["ensemble"] = mean_probs_logits(logits)
    return out


def export_member(models: nn.Module, key: str | None) -> nn.Module:
    """A plain copy of member ``key`` (``peer{i}``; None means ``peer0``) detached from the method (also from a
    fused cohort)."""
    key = key or "peer0"
    keys = peer_keys(len(models))
    if key not in keys:
        raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(keys)}")
    if isinstance(models, FusedModels):
        return models.export(keys.index(key)).eval()
    return copy.deepcopy(models[keys.index(key)]).eval()
