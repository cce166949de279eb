"""Helpers for methods built on shared-trunk multi-branch networks (CSS, PCL)."""
from __future__ import annotations

from peerkd.models import branched, build_model
from peerkd.models.branched import BranchedNet


def build_branched(name: str, num_classes: int, split_at: int, branches: int, model_options: dict) -> BranchedNet:
    """``branched(name, ...)`` where ``split_at <= 0`` counts from the end: -1 shares every stage but the last (the
    ONE / OKDDip / PCL / CSS split for CIFAR ResNets: stages 1-2 shared, stage 3 + head per branch)."""
    from peerkd.config import ConfigError

    try:
        if split_at <= 0:
            split_at += len(build_model(name, 1, **model_options).stages)
        return branched(name, num_classes, split_at=split_at, branches=branches, **model_options)
    except KeyError as err:
        raise ConfigError(f"method.models: {err.args[0]}") from None
    except ValueError as err:
        raise ConfigError(f"method.split_at: {err}") from None
