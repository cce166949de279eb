"""Helpers for methods whose members are whole networks (vanilla cohorts, KD students, DML peers, KDCL).

A method builds its members with ``build_cohort(..., fuse=...)`` and runs them with ``run_cohort(models, x)`` (the
logits) or ``run_cohort_features(models, x)`` (pooled penultimate features and logits); it never needs to know whether
they run as separate modules, on CUDA streams or as one fused module (:mod:`peerkd.models.fused`). A
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

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled penultimate features ``(P, B, D)`` and logits ``(P, B, K)``; ``x`` as in :meth:`forward`."""
        return self.fused.features_and_logits(x)

    @property
    def feature_width(self) -> int:
        """D: the width of one member's pooled penultimate vector (its classifier's input)."""
        return self.fused.head.in_features

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


def _fused_input(x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """``x`` as a fused cohort takes it: one shared ``(B, C, H, W)`` or the members' inputs stacked ``(P, B, ...)``."""
    return torch.stack(list(x)) if isinstance(x, (list, tuple)) else x


def _member_inputs(x: torch.Tensor | list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Member ``i``'s input for each of ``count`` separate members (``x[i]`` when ``x`` has one per member)."""
    per_member = isinstance(x, (list, tuple)) or x.dim() == 5
    return [x[i] if per_member else x for i in range(count)]


def run_cohort(models: nn.Module, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Every member's logits: ``x`` is one input for all (``(B, C, H, W)``) or one per member (a list, or a tensor
    ``(P, B, C, H, W)``); fused or not, the result is the same list of ``(B, K)`` logits."""
    if isinstance(models, FusedModels):
        return list(models(_fused_input(x)).unbind(0))
    inputs = _member_inputs(x, len(models))
    if isinstance(models, StreamedModels):
        return models.run(inputs)
    return [model(member_x) for model, member_x in zip(models, inputs)]


def run_cohort_features(models: nn.Module, x: torch.Tensor | list[torch.Tensor]
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every member's ``(features, logits)``: its pooled penultimate vector ``(B, D)`` (``head.features``) and its
    logits ``(B, K)`` from one forward pass (``Backbone.features_and_logits``); ``x`` as in :func:`run_cohort`.
    For methods that need the features a classifier sees (feature MMD, a classifier over the peers' features)."""
    if isinstance(models, FusedModels):
        features, logits = models.features_and_logits(_fused_input(x))
        return list(zip(features.unbind(0), logits.unbind(0)))
    inputs = _member_inputs(x, len(models))
    if isinstance(models, StreamedModels):
        return models.run(inputs, call=lambda model, member_x: model.features_and_logits(member_x))
    return [model.features_and_logits(member_x) for model, member_x in zip(models, inputs)]


def feature_widths(models: nn.Module) -> list[int]:
    """Each member's pooled penultimate width D (its ``head.in_features``), fused or not."""
    if isinstance(models, FusedModels):
        return [models.feature_width] * len(models)
    return [model.head.in_features for model in models]


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
