"""The errors peerkd raises for bad input. Each message says what is wrong and what to do; the CLI prints it in one
line and exits 2 (nothing was trained, nothing finished was lost)."""
from __future__ import annotations

import unicodedata


def one_line(message: object) -> str:
    """``message`` with its control characters escaped (a newline in a user's key or file name shows as ``\\n``), so
    that an error echoing the user's input is still one line."""
    text = str(message)
    if all(unicodedata.category(ch) != "Cc" for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
                   for ch in text)


class _OneLine:
    """A message kept to one line, whatever input it quotes."""

    def __init__(self, message: object = "", *args):
        super().__init__(one_line(message), *args)


class ConfigError(_OneLine, ValueError):
    """A configuration that cannot be used, or a name no registry knows; the message says which key and what to do."""


class DataError(_OneLine, RuntimeError):
    """A dataset that is missing or unreadable; the message says what to put where."""


class RunError(_OneLine, RuntimeError):
    """A run folder or checkpoint that cannot be used as asked (missing, damaged, in use, of another config)."""


__all__ = ["ConfigError", "DataError", "RunError"]
