"""The errors peerkd raises for bad input. Each message says what is wrong and what to do; the CLI prints it in one
line and exits 2 (nothing was trained, nothing finished was lost)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be used, or a name no registry knows; the message says which key and what to do."""


class DataError(RuntimeError):
    """A dataset that is missing or unreadable; the message says what to put where."""


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used as asked (missing, damaged, in use, of another config)."""


__all__ = ["ConfigError", "DataError", "RunError"]
