"""Helpers for methods built on shared-trunk multi-branch networks (CSS, PCL, and the branch group of ONE / OKDDip /
MDE)."""
from __future__ import annotations

from typing import Callable, TypeVar

from peerkd.models import branched
from peerkd.models.branched import BranchedNet
from peerkd.models.branched_cohort import BranchedNets, FusedBranchedNets, branched_cohort

Built = TypeVar("Built")


def _with_config_errors(build: Callable[..., Built], *args, **kwargs) -> Built:
    """``build(*args, **kwargs)`` with its errors as ConfigErrors naming the config key: an impossible split is
    ``method.split_at``'s fault."""
    from peerkd.core.errors import ConfigError

    try:
        return build(*args, **kwargs)
    except ConfigError:
        raise  # an unknown model: the registry's message names the key and the nearest model
    except ValueError as err:
        raise ConfigError(f"method.split_at: {err}") from None


def build_branched(name: str, num_classes: int, split_at: int, branches: int, model_options: dict) -> BranchedNet:
    """``branched(name, ...)`` with config errors (``split_at <= 0`` counts from the end: -1 shares every stage but
    the last, the ONE / OKDDip / PCL / CSS split for CIFAR ResNets). The identical tails execute as the current member
    execution says (:mod:`peerkd.models.execution`)."""
    return _with_config_errors(branched, name, num_classes, split_at=split_at, branches=branches, **model_options)


def build_branched_cohort(names: list[str], num_classes: int, split_at: int, branches: int,
                          model_options: dict) -> BranchedNets | FusedBranchedNets:
    """:func:`~peerkd.models.branched_cohort.branched_cohort` (one branched network per name; identical networks
    grouped as one cohort under the member execution "grouped") with config errors, as :func:`build_branched`."""
    return _with_config_errors(branched_cohort, names, num_classes, split_at=split_at, branches=branches,
                               **model_options)
