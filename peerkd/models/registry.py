"""Models by name. A factory is ``fn(num_classes, **kwargs) -> Backbone``.

Besides the registered names, ``timm:<name>`` and ``tv:<name>`` build a timm or torchvision classifier through
:mod:`peerkd.models.adapters`, and an ``nn.Module`` instance (from Python) stands for itself: every build is a deep
copy of it, weights included (pass distinct instances for independently initialised peers).
"""
from __future__ import annotations

import copy

from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.registry import MODELS, model_descriptions, model_names, register_model  # noqa: F401 (re-exported)


def model_label(name) -> str:
    """How a model is named in messages: its name, or for an instance its class (never its repr: thousands of
    characters for a whole network)."""
    if isinstance(name, str):
        return f"'{name}'"
    return f"a {type(name).__module__}.{type(name).__qualname__} instance"


def build_model(name: str | nn.Module, num_classes: int, key: str | None = None, **kwargs) -> nn.Module:
    """The model ``name`` (registered, ``timm:``/``tv:``, or a deep copy of an instance) for ``num_classes``; an
    unknown name raises ConfigError naming the config key ``key`` that gave it (default ``model``)."""
    if isinstance(name, nn.Module):
        return copy.deepcopy(name)
    if not isinstance(name, str):
        raise ConfigError(f"{key or MODELS.key}: a model is a registered name, timm:<name>, tv:<name> or an "
                          f"nn.Module, not {model_label(name)}")
    from peerkd.models.adapters import build_library_model, is_library_name

    if is_library_name(name):
        model = build_library_model(name, num_classes, **kwargs)
        model.peerkd_spec = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}
        return model
    model = MODELS.get(name, key)(num_classes=num_classes, **kwargs)
    model.peerkd_spec = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}  # to rebuild it by name
    return model
