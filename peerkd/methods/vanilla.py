"""Vanilla training: one or several independent networks, each on the hard labels alone.

Loss: ``L = sum_i CE(z_i, y)``. With several networks they share nothing but the batch, so the result is that of
separate runs (each from its own initialisation) plus the accuracy of their probability-averaged ensemble: the
"independent ensemble" baseline the online-KD tables compare with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peerkd.losses import hard_ce
from peerkd.core.method import StepOutput
from peerkd.methods.parts.cohort import CohortMethod, build_cohort, run_cohort
from peerkd.core.registry import register_method


@register_method("vanilla")
class Vanilla(CohortMethod):
    """Independent networks on hard labels (the baseline of every table)."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet32"])  # one network, or several independent ones
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory

    def __init__(self, options, task):
        super().__init__(options, task)
        self.models = build_cohort(options.models, task.num_classes, options.model_options)

    def forward(self, batch) -> StepOutput:
        x = batch.view(0)
        losses = [hard_ce(z, batch) for z in run_cohort(self.models, x)]
        logs = {f"ce{i}": loss.detach() for i, loss in enumerate(losses)}
        return StepOutput(torch.stack(losses).sum(), logs)
