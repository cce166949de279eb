"""Whole-network cohorts for methods whose members are complete networks (vanilla cohorts, KD students, DML peers,
KDCL students, CutnMix peers): networks built by name and run as one member group (:mod:`peerkd.models.members`).

A method builds its members with ``build_cohort(...)`` and runs them with ``run_cohort(models, x)`` (the logits) or
``run_cohort_features(models, x)`` (pooled penultimate features and logits); it never needs to know whether they run
as separate modules, on CUDA streams, as one fused module or vmapped (the run's ``trainer.members``, which reaches the
build through :func:`~peerkd.models.execution.member_execution`): that is the group's business, and so are the
state_dict keys (``{i}.<name>`` in every execution, so checkpoints load into a method built in any execution) and the
plain models ``export_member`` returns. This module only adds what is particular to whole networks: building them from
names, running a cohort of different networks separately, and per-member inputs as one ``(P, B, C, H, W)`` tensor (a
batch's views).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from peerkd.losses import mean_probs_logits
from peerkd.core.method import Method
from peerkd.models.execution import current_member_execution
from peerkd.models import build_model
from peerkd.models.members import build_members
from peerkd.models.registry import model_label

CohortInputs = torch.Tensor | list[torch.Tensor]  # (B, C, H, W) for every member; (P, B, C, H, W) or a list: one each


def build_cohort(names: list[str], num_classes: int, model_options: dict) -> nn.Module:
    """The networks named ``names`` as a member group executing as the current member execution (:func:`build_members`,
    :mod:`peerkd.models.execution`). A heterogeneous cohort, or one with a module fusion does not know, cannot be
    grouped or vmapped: it runs separately, with a warning."""
    from peerkd.core.errors import ConfigError

    if not names:
        raise ConfigError("method.models: name at least one model (see `peerkd list models`)")
    models = [build_model(name, num_classes, key="method.models", **model_options) for name in names]
    execution = current_member_execution()
    if execution in ("grouped", "vmap") and len(set(names)) > 1:
        labels = ", ".join(model_label(name) for name in names)
        warnings.warn(f"trainer.members {execution}: the cohort [{labels}] is not identical; it runs separately",
                      stacklevel=2)
        execution = "separate"
    return build_members(models, execution)


def _member_inputs(x: CohortInputs) -> torch.Tensor | list[torch.Tensor]:
    """``x`` as a member group takes it: one shared tensor, or a list with one tensor per member (a
    ``(P, B, C, H, W)`` tensor is split along its first dimension)."""
    return list(x.unbind(0)) if isinstance(x, torch.Tensor) and x.dim() == 5 else x


def run_cohort(models: nn.Module, x: CohortInputs) -> list[torch.Tensor]:
    """Every member's logits ``(B, K)``: ``x`` is one input for all (``(B, C, H, W)``) or one per member (a list,
    or a tensor ``(P, B, C, H, W)``); the same list in every execution."""
    return models.run(_member_inputs(x))


def run_cohort_features(models: nn.Module, x: CohortInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every member's ``(features, logits)``: its pooled penultimate vector ``(B, D)`` (``head.features``) and its
    logits ``(B, K)`` from one forward pass; ``x`` as in :func:`run_cohort`. For methods that need the features a
    classifier sees (feature MMD, a classifier over the peers' features)."""
    outputs = models.outputs(_member_inputs(x))
    return list(zip(outputs.features, outputs.logits))


def feature_widths(models: nn.Module) -> list[int]:
    """Each member's pooled penultimate width D (its classifier's input: ``head.fc`` is ``(K, D)``), in every
    execution."""
    return [models.member_parameter(j, "head.fc.weight").shape[1] for j in range(len(models))]


def peer_keys(count: int) -> list[str]:
    return [f"peer{i}" for i in range(count)]


def cohort_predictions(logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``peer{i}`` for each member and, for two or more, ``ensemble`` (the mean of their probabilities)."""
    out = {key: z for key, z in zip(peer_keys(len(logits)), logits)}
    if len(logits) > 1:
        out["ensemble"] = mean_probs_logits(logits)
    return out


def export_member(models: nn.Module, key: str | None) -> nn.Module:
    """A plain copy of member ``key`` (``peer{i}``; None means ``peer0``) in eval mode, detached from the method, in
    every execution."""
    key = key or "peer0"
    keys = peer_keys(len(models))
    if key not in keys:
        raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(keys)}")
    return models.export(keys.index(key)).eval()


def export_single_network(model: nn.Module, key: str | None, exportable: str = "net") -> nn.Module:
    """A plain copy of a method's one network ``model`` in eval mode, for ``export(key)`` of a method whose only
    exportable ``predict`` key is ``exportable`` (None means it)."""
    import copy

    if key not in (None, exportable):
        raise KeyError(f"cannot export '{key}': the exportable key is {exportable}")
    return copy.deepcopy(model).eval()


class CohortMethod(Method):
    """Base of the methods whose members are whole networks held in ``self.models`` (a member group): it predicts
    every member's logits and, for two or more, their ensemble; the members form the diversity group; any member
    exports as a plain model."""

    def predict(self, x):
        return cohort_predictions(run_cohort(self.models, x))

    def diversity_groups(self):
        return {"peers": peer_keys(len(self.models))} if len(self.models) > 1 else {}

    def export(self, key=None):
        return export_member(self.models, key)
