"""Helpers for methods whose members are whole networks (vanilla cohorts, KD students, DML peers, KDCL)."""
from __future__ import annotations

import torch
from torch import nn

from peerkd.losses import mean_probs_logits
from peerkd.models import build_model


def build_cohort(names: list[str], num_classes: int, model_options: dict) -> nn.ModuleList:
    if not names:
        from peerkd.config import ConfigError
        raise ConfigError("method.models: name at least one model (see `peerkd list models`)")
    try:
        return nn.ModuleList([build_model(name, num_classes, **model_options) for name in names])
    except KeyError as err:
        from peerkd.config import ConfigError
        raise ConfigError(f"method.models: {err.args[0]}") from None


def peer_keys(count: int) -> list[str]:
    return [f"peer{i}" for i in range(count)]


def cohort_predictions(logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``peer{i}`` for each member and, for two or more, ``ensemble`` (the mean of their probabilities)."""
    out = {key: z for key, z in zip(peer_keys(len(logits)), logits)}
    if len(logits) > 1:
        out["ensemble"] = mean_probs_logits(logits)
    return out


def export_member(models: nn.ModuleList, key: str | None) -> nn.Module:
    """A copy of member ``key`` (``peer{i}``; None means ``peer0``) detached from the method."""
    import copy

    key = key or "peer0"
    keys = peer_keys(len(models))
    if key not in keys:
        raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(keys)}")
    return copy.deepcopy(models[keys.index(key)]).eval()
