"""Models by name. A factory is ``fn(num_classes, **kwargs) -> Backbone``.

Besides the registered names, ``timm:<name>`` and ``tv:<name>`` build a timm or torchvision classifier through
:mod:`peerkd.models.adapters`, and an ``nn.Module`` instance (from Python) stands for itself: every build is a deep
copy of it, weights included (pass distinct instances for independently initialised peers).
"""
from __future__ import annotations

import copy
import difflib
from typing import Callable

from torch import nn

from peerkd.docstrings import summary_line

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = ""):
    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description or summary_line(fn.__doc__)
        return fn
    return wrap


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_descriptions() -> dict[str, str]:
    return dict(sorted(_DESCRIPTIONS.items()))


def model_label(name) -> str:
    """How a model is named in messages: its name, or for an instance its class (never its repr: thousands of
    characters for a whole network)."""
    if isinstance(name, str):
        return f"'{name}'"
    return f"a {type(name).__module__}.{type(name).__qualname__} instance"


def build_model(name: str | nn.Module, num_classes: int, **kwargs) -> nn.Module:
    if isinstance(name, nn.Module):
        return copy.deepcopy(name)
    if not isinstance(name, str):
        raise KeyError(f"a model is a registered name, timm:<name>, tv:<name> or an nn.Module, not "
                       f"{model_label(name)}")
    from peerkd.models.adapters import build_library_model, is_library_name

    if is_library_name(name):
        model = build_library_model(name, num_classes, **kwargs)
        model.peerkd_spec = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}
        return model
    if name not in _MODELS:
        from peerkd.plugins import load_entry_points

        load_entry_points()  # an installed package's model (a no-op once loaded)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise KeyError(f"unknown model '{name}'; {hint}see `peerkd list models` (or use timm:<name> / tv:<name>)")
    model = _MODELS[name](num_classes=num_classes, **kwargs)
    model.peerkd_spec = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}  # to rebuild it by name
    return model
