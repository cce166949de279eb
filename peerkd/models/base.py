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
