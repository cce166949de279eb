"""The one-line summaries ``peerkd list`` prints, taken from docstrings."""
from __future__ import annotations


def summary_line(doc: str | None) -> str:
    """A docstring's first paragraph as one line: a summary wrapped over two source lines stays whole."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())
