"""The backbone contract: ``stem -> stages[0..S-1] -> head``.

Methods tap features without rewriting a model: ``forward_stages`` returns the map after every stage,
``head.features`` the pooled vector before the classifier, ``head.classify`` the logits from that vector, ``head.fc``
the classifier itself.
"""
from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Global average pooling, flatten, linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)
        self.in_features = in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The logits from the pooled features (what ``forward`` does after ``features``), so a method that needs
        both pools once."""
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class Backbone(nn.Module):
    """A network made of ``stem``, ``stages`` (an ``nn.ModuleList``) and ``head``.

    Subclasses set those three and ``stage_channels`` (the channels after each stage).
    """

    stem: nn.Module
    stages: nn.ModuleList
    head: ClassifierHead
    stage_channels: list[int]

    def forward_stages(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> list[torch.Tensor]:
        """Feature maps after stages ``start .. end-1``; ``x`` is the input image when ``start == 0`` (the stem runs
        first), else the output of stage ``start - 1``."""
        if start == 0:
            x = self.stem(x)
        outs = []
        for stage in self.stages[start:end]:
            x = stage(x)
            outs.append(x)
        return outs

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled penultimate vector (``head.features``) and the logits, from one forward pass. The logits are
        the head's own output on that map, so a head with more than pool + fc (dropout) keeps its behaviour."""
        last = self.forward_stages(x)[-1]
        return self.head.features(last), self.head(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])


# ------------------------------------------------------------------------------------------------ capabilities

CAPABILITIES = {  # what a method may ask of a model beyond its logits, and what that takes of the model
    "features": "the pooled features and linear classifier of the contract (forward_stages, head.features, "
                "head.classify, head.fc: an nn.Linear)",
    "stages": "the stem / stages / head contract (stem, stages, stage_channels, forward_stages, head.features, "
              "head.fc: an nn.Linear)",
}


def missing_capability(model: nn.Module, need: str) -> str | None:
    """Why ``model`` lacks capability ``need`` (one of CAPABILITIES), or None when it has it. A model that explains
    its own structure (``structure_note``: a timm / torchvision model kept whole) gives that reason."""
    if need not in CAPABILITIES:
        raise ValueError(f"unknown model capability '{need}'; one of {', '.join(CAPABILITIES)}")
    head = getattr(model, "head", None)
    lacks = [name for name, ok in (
        ("forward_stages", callable(getattr(model, "forward_stages", None))),
        ("head.features", callable(getattr(head, "features", None))),
        ("head.classify", callable(getattr(head, "classify", None))),
        ("head.fc (an nn.Linear)", isinstance(getattr(head, "fc", None), nn.Linear)),
    ) if not ok]
    if need == "stages":
        stages = getattr(model, "stages", None)
        channels = getattr(model, "stage_channels", None)
        lacks += [name for name, ok in (
            ("stem", isinstance(getattr(model, "stem", None), nn.Module)),
            ("stages (an nn.ModuleList)", isinstance(stages, nn.ModuleList) and len(stages) > 0),
            ("stage_channels", isinstance(channels, (list, tuple)) and isinstance(stages, nn.ModuleList)
             and len(channels) == len(stages)),
        ) if not ok]
    if not lacks:
        return None
    note = getattr(model, "structure_note", None)
    return f"has no {', '.join(lacks)}" + (f" ({note})" if note else "")
