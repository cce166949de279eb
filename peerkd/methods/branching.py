"""Helpers for methods built on shared-trunk multi-branch networks (CSS, PCL)."""
from __future__ import annotations

from peerkd.models import branched
from peerkd.models.branched import BranchedNet


def build_branched(name: str, num_classes: int, split_at: int, branches: int, model_options: dict) -> BranchedNet:
    """``branched(name, ...)`` with its errors as ConfigErrors naming the config key (``split_at <= 0`` counts from
    the end: -1 shares every stage but the last, the ONE / OKDDip / PCL / CSS split for CIFAR ResNets)."""
    from peerkd.config import ConfigError

    try:
        return branched(name, num_classes, split_at=split_at, branches=branches, **model_options)
    except KeyError as err:
        raise ConfigError(f"method.models: {err.args[0]}") from None
    except ValueError as err:
        raise ConfigError(f"method.split_at: {err}") from None
