"""Methods by name."""
from __future__ import annotations

import difflib

from peerkd.config import ConfigError
from peerkd.docstrings import summary_line

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        if name in _METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        cls.method_name = name
        _METHODS[name] = cls
        return cls
    return wrap


def _ensure_loaded() -> None:
    import peerkd.methods  # noqa: F401  (imports every method module, which registers itself)


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def method_descriptions() -> dict[str, str]:
    _ensure_loaded()
    return {name: summary_line(cls.__doc__) for name, cls in sorted(_METHODS.items())}


def method_class(name: str) -> type:
    _ensure_loaded()
    if name not in _METHODS:
        from peerkd.plugins import load_entry_points

        load_entry_points()  # an installed package's method (a no-op once loaded)
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"method.name: unknown method '{name}'; {hint}choose one of: {', '.join(sorted(_METHODS))} "
                          "(a method of your own: load its file with --import or imports:)")
    return _METHODS[name]


def method_options_class(name: str) -> type:
    return method_class(name).Options


def build_method(name: str, options, task):
    return method_class(name)(options, task)
