"""Models by name. A factory is ``fn(num_classes, **kwargs) -> Backbone``."""
from __future__ import annotations

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


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    if name not in _MODELS:
        from peerkd.plugins import load_entry_points

        load_entry_points()  # an installed package's model (a no-op once loaded)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise KeyError(f"unknown model '{name}'; {hint}see `peerkd list models`")
    model = _MODELS[name](num_classes=num_classes, **kwargs)
    model.peerkd_spec = {"name": name, "num_classes": num_classes, "kwargs": dict(kwargs)}  # to rebuild it by name
    return model
