"""One registry shape for everything looked up by name: methods, models and datasets.

A :class:`Registry` maps names to objects (a method class, a model factory, a dataset loader). Entries register
themselves when their module is imported (``@METHODS.register("dml")``); before a name is looked up, the registry
imports its package, every module of it (so a new method is one new file in ``peerkd/methods/``, found without an
import line anywhere), then the installed plugins (entry points of the group ``peerkd.plugins``,
:mod:`peerkd.core.plugins`). A name it does not know raises one error type, :class:`~peerkd.core.errors.ConfigError`,
naming the config key, the nearest registered name and where to look. The registry imports its package by name at
run time, so this module depends on nothing but :mod:`peerkd.core` and the import graph has no circle through it.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable, Iterator

from peerkd.core.docstrings import summary_line
from peerkd.core.errors import ConfigError


class Registry:
    """Names -> registered objects, with descriptions (the first line of the docstring unless given).

    kind: what an entry is, for messages ("method"); package: the package whose modules register the entries (all of
    its top-level modules are imported on first use); key: the config key that names an entry ("method.name");
    listing: where a user sees the names (`peerkd list methods`) and how to add one of their own.
    """

    def __init__(self, kind: str, package: str, key: str, listing: str):
        self.kind, self.package, self.key, self.listing = kind, package, key, listing
        self._entries: dict[str, Any] = {}
        self._descriptions: dict[str, str] = {}
        self._loaded = False

    # -- registering ------------------------------------------------------------------------------------------
    def register(self, name: str, description: str = "") -> Callable[[Any], Any]:
        """Decorator: register the class or function under ``name`` (a second entry of the same name is refused)."""
        def wrap(obj):
            self.add(name, obj, description)
            return obj
        return wrap

    def add(self, name: str, obj: Any, description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} is registered under a non-empty string, not {name!r}")
        if name in self._entries and self._entries[name] is not obj:
            raise ConfigError(f"{self.kind} '{name}' is registered twice ({_where(self._entries[name])} and "
                              f"{_where(obj)}); rename one of them")
        self._entries[name] = obj
        if self.kind == "method" and isinstance(obj, type):
            obj.method_name = name  # how the class names itself in messages
        self._descriptions[name] = description or summary_line(getattr(obj, "__doc__", None))

    # -- looking up -------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the package's modules (once per process): each registers its entries."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not module.ispkg and not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def _load_all(self) -> None:
        self.load()
        from peerkd.core.plugins import load_entry_points

        load_entry_points()  # an installed package's entries (a no-op once loaded)

    def __contains__(self, name: object) -> bool:
        self.load()
        if name not in self._entries:
            self._load_all()
        return name in self._entries

    def get(self, name: str, key: str | None = None) -> Any:
        """The entry ``name``; an unknown name raises ConfigError naming ``key`` (default: the registry's own)."""
        if name not in self:
            raise self.unknown(name, key)
        return self._entries[name]

    def unknown(self, name: object, key: str | None = None) -> ConfigError:
        """The error for a name this registry does not hold: the key, the nearest name, where to look."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return ConfigError(f"{key or self.key}: unknown {self.kind} {name!r}; {hint}{self.listing}")

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._entries)

    def descriptions(self) -> dict[str, str]:
        self._load_all()
        return dict(sorted(self._descriptions.items()))

    def items(self) -> Iterator[tuple[str, Any]]:
        self._load_all()
        return iter(sorted(self._entries.items()))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary entry clean up with it). The package is imported first, so
        a later first lookup does not bring the entry back."""
        self._load_all()
        self._entries.pop(name, None)
        self._descriptions.pop(name, None)


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


METHODS = Registry("method", "peerkd.methods", "method.name",
                   "see `peerkd list methods` (a method of your own: load its file with --import or imports:)")
MODELS = Registry("model", "peerkd.models", "method.model",
                  "see `peerkd list models` (or use timm:<name> / tv:<name>; a model of your own: --import)")
DATASETS = Registry("dataset", "peerkd.data", "data.dataset",
                    "see `peerkd list datasets` (a dataset of your own: register it in a file loaded with --import)")

__all__ = ["DATASETS", "METHODS", "MODELS", "Registry"]


# The names the rest of peerkd (and the public API) uses for the three registries.
register_method = METHODS.register
register_model = MODELS.register
register_dataset = DATASETS.register
method_names = METHODS.names
method_descriptions = METHODS.descriptions
model_names = MODELS.names
model_descriptions = MODELS.descriptions
dataset_names = DATASETS.names
dataset_descriptions = DATASETS.descriptions


def method_class(name: str) -> type:
    """The registered Method class ``name`` (ConfigError naming ``method.name`` if there is none)."""
    return METHODS.get(name)


def build_method(name: str, options, task):
    """The method ``name`` built from its Options instance and the task."""
    return METHODS.get(name)(options, task)


__all__ += ["build_method", "dataset_descriptions", "dataset_names", "method_class", "method_descriptions",
            "method_names", "model_descriptions", "model_names", "register_dataset", "register_method",
            "register_model"]
