"""Parameter counts of a method's networks, for ``summary.json`` and ``peerkd list models``.

``parameter_summary(method, keys)`` counts every trainable parameter of the method (peers, branches, gates, fusion
modules, adapters: what training updates), the exported model (``method.export()``: what is deployed), and, per
``predict`` key, the plain network that ``method.export(key)`` gives; a key with no plain network of its own (an
ensemble, a gated or fused aggregate, a shallow classifier) maps to None.
"""
from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """All parameters of ``module`` (trainable or not; each shared tensor once)."""
    return sum(p.numel() for p in module.parameters())


def _exported_count(method: nn.Module, key: str | None) -> int | None:
    try:
        return count_parameters(method.export(key))
    except (KeyError, NotImplementedError):  # an aggregate key, or a method without a plain network
        return None


def parameter_summary(method: nn.Module, keys: list[str]) -> dict:
    """``{"trained": int, "exported": int | None, "keys": {key: int | None}}`` (parameters, not millions)."""
    return {"trained": sum(p.numel() for p in method.parameters() if p.requires_grad),
            "exported": _exported_count(method, None),
            "keys": {key: _exported_count(method, key) for key in keys}}
