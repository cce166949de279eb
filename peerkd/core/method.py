"""The method contract. One trainer serves every method through it and never asks for a method's name.

A method owns all it trains (peers, branches, gates, fusion modules, peer teachers) and all its state
(``register_buffer``), so ``parameters()`` and ``state_dict()`` are complete and a checkpoint restores it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class DataRequest:
    """What a method needs from the data pipeline."""

    views: int = 1  # independently augmented views of every image (ICL, CutnMix, PCL, DDGSD)
    heldout_per_class: int = 0  # images per class held out of training for the method (KDCL-General)
    mixing: str = ""  # batch mixing the method needs ("mixup", "cutmix", "cutnmix"); "" leaves it to data.mixing
    class_pairs: int = 0  # k: every sample comes with k others of its class in Batch.pair_x (CS-KD 1 = True, BAKE 3)
    previous_batch: bool = False  # True: every batch also carries the one this process trained on one step before
    # (Batch.prev_x / prev_y / prev_index, across epochs and resumes; Batch.prev_valid 0 on the run's first step: DLB)


@dataclass
class TaskInfo:
    """What a method may know about the task when it is built."""

    num_classes: int
    image_size: int = 32
    num_train: int = 0  # images in the training split: size of per-sample memories (Batch.index < num_train)
    in_channels: int = 3
    restoring: bool = False  # True when rebuilt to receive a checkpoint: build architectures, load no weights


@dataclass
class StepOutput:
    """The scalar to back-propagate and named, detached parts of it for the logs (device tensors: no sync)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EpochContext:
    """Handed to ``on_epoch_end``: the finished epoch and what a method may evaluate on."""

    epoch: int  # the epoch just finished, counted from 0
    epochs: int
    device: torch.device
    heldout: Any = None  # an EvalLoader over the held-out split, when the method asked for one
    autocast: Callable[[], Any] | None = None  # a context manager factory matching the training precision
    world: int = 1  # DDP processes; reduce across them with torch.distributed when world > 1


class Method(nn.Module):
    """Base of every method. Subclasses define ``Options`` (a dataclass: the ``method.*`` config keys) and
    ``forward`` / ``predict``; the rest has defaults."""

    Options: type = type(None)

    def __init__(self, options: Any, task: TaskInfo):
        super().__init__()
        self.options = options
        self.task = task
        check_model_requirements(type(self), options, task)

    # -- data -------------------------------------------------------------------------------------------------
    @classmethod
    def data_request(cls, options: Any) -> DataRequest:
        """What the method needs from the data, known from its options before it is built."""
        return DataRequest()

    @classmethod
    def model_requirements(cls, options: Any) -> dict[str, tuple[str, ...]]:
        """What the method asks of the models its options name beyond their logits: option field (``models``,
        ``model``) -> capabilities (``peerkd.models.base.CAPABILITIES``: "features", "stages"). Checked for every
        named model before the method builds anything (:func:`check_model_requirements`)."""
        return {}

    ddp_find_unused_parameters = False  # True for methods that leave some trained parameters unused in a step
    ddp_broadcast_buffers = True  # False for methods that keep rank-synchronised buffers themselves (per-sample memory)

    # -- training ---------------------------------------------------------------------------------------------
    def forward(self, batch) -> StepOutput:  # noqa: D102  (documented in the class)
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before the first step of every epoch (0-based)."""

    def on_epoch_end(self, ctx: EpochContext) -> None:
        """Called after the last step of every epoch, in eval mode where the method switches it."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def update_scales(self) -> list[tuple[list[nn.Parameter], torch.Tensor]]:
        """Groups of trained parameters whose optimiser update the step multiplies by a 0-dim device tensor (the
        method writes it in ``forward``; read after backward, no host sync): 1 the plain update, s > 0 the update at
        s times the learning rate (a network's own learning rate), 0 no update at all: its parameters and momentum
        buffers stay as they were, as if its optimiser had not stepped (SwitOKD's paused teacher). The step asks
        once, when it is built, so return the same tensors every time. Default: none."""
        return []

    # -- evaluation -------------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every peer / branch / aggregate the paper reports; the trainer scores each key."""
        raise NotImplementedError

    def diversity_groups(self) -> dict[str, list[str]]:
        """Groups of ``predict`` keys whose mutual diversity is measured (e.g. ``{"peers": ["peer0", "peer1"]}``)."""
        return {}

    # -- deployment -------------------------------------------------------------------------------------------
    def export(self, key: str | None = None) -> nn.Module:
        """A module with trained weights computing ``predict(x)[key]`` (None: the default key): a plain registered
        model where the key is one network (a peer, a branch path), or a method's own module for what it evaluates
        as one (CSS's masked m-branch networks). ``peerkd export`` (peerkd/deploy/export.py) checks it against
        ``predict`` and exports keys a method does not export here (ensembles, leader aggregates) as the method's
        ``predict``."""
        raise NotImplementedError(f"{type(self).__name__} has no exportable model")


def _capability_gaps(name, num_classes: int, model_options: dict, needs: tuple[str, ...], key: str) -> list[str]:
    """The reasons the model ``name`` (a name or an instance) lacks each of ``needs``; a named model is built once
    per process (under a forked random state: the check draws no random number of the run) and remembered."""
    from peerkd.models.base import missing_capability
    from peerkd.models.registry import build_model

    if isinstance(name, nn.Module):
        probe = name
    else:
        key = (name, num_classes, repr(sorted(model_options.items())), needs)
        if key in _GAPS:
            return _GAPS[key]
        with torch.random.fork_rng(devices=[]):
            probe = build_model(name, num_classes, key=key, **model_options)
    gaps = [why for why in (missing_capability(probe, need) for need in needs) if why]
    if not isinstance(name, nn.Module):
        _GAPS[key] = gaps
    return gaps


_GAPS: dict[tuple, list[str]] = {}


def check_model_requirements(method: type, options: Any, task: TaskInfo) -> None:
    """Refuse, before anything is built, a model that lacks what ``method.model_requirements(options)`` declares:
    a ConfigError naming the option, the method, the model (by name, or by class for an instance) and what it
    lacks."""
    from peerkd.core.errors import ConfigError
    from peerkd.models.registry import model_label

    if options is None:
        return
    method_name = getattr(method, "method_name", method.__name__)
    for field_name, needs in method.model_requirements(options).items():
        value = getattr(options, field_name)
        for name in value if isinstance(value, (list, tuple)) else [value]:
            gaps = _capability_gaps(name, task.num_classes, dict(getattr(options, "model_options", {}) or {}),
                                    tuple(needs), key=f"method.{field_name}")
            if gaps:
                raise ConfigError(f"method.{field_name}: {method_name} needs {' and '.join(needs)} from its models, "
                                  f"but {model_label(name)} {'; '.join(gaps)}. Use a model of the stem / stages / head "
                                  "contract (`peerkd list models`; timm: and tv: models whose forward is their "
                                  "children in order), or a method that needs only logits (dml, kdcl, vanilla)")
