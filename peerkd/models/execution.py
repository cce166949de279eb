"""How a method's identical members (peers, or the tails of a branched network) execute: the ``method.fuse`` option.

Every method with identical members has ``fuse: str = "auto"`` in its Options and hands the value to the builders
(:func:`peerkd.methods.parts.cohort.build_cohort` for whole-network cohorts, :func:`peerkd.methods.parts.branching.build_branched`
for branch tails, :func:`peerkd.methods.parts.branching.build_branched_cohort` for several branched networks (CSS: identical
ones fuse as one trunk group and one group of all tails), :func:`peerkd.models.members.build_members` with
``resolved(fuse)`` for other identical groups: OKDDip's network-based peers, CL's head tree); the method's own code
never changes with it, and neither do its maths, its state_dict keys or its exported models:

- ``"off"``: separate modules, one after another (the reference execution);
- ``"on"``: one fused module (:mod:`peerkd.models.fused`: grouped convolutions, one BatchNorm over all copies'
  channels, batched heads);
- ``"streams"``: separate modules, each on its own CUDA stream so their kernels may overlap (on CPU: "off");
- ``"vmap"``: the members' tensors stacked and one member's forward vectorised over them (``torch.func``: any module
  type, BatchNorm included; :class:`peerkd.models.members.VmappedMembers`);
- ``"auto"``: the trainer measures "off", "on", "streams" and "vmap" on the run's first batch and device, keeps the
  fastest (:mod:`peerkd.train.execution`); on a CPU, or a method built outside the trainer, it is "off" (grouped
  convolutions are slower than separate ones on CPU: BENCHMARKS.md).

A YAML ``true`` / ``false`` reads as "on" / "off". A cohort that cannot fuse (heterogeneous members, an unknown
module type) runs unfused with a warning.
"""
from __future__ import annotations

FUSE_CHOICES = ("off", "on", "streams", "vmap", "auto")
MEASURED_CHOICES = ("off", "on", "streams", "vmap")  # what "auto" picks from


def check_fuse(value: str) -> str:
    """``value`` if it is one of FUSE_CHOICES, else a ConfigError naming ``method.fuse``."""
    from peerkd.core.errors import ConfigError

    if value not in FUSE_CHOICES:
        raise ConfigError(f"method.fuse: expected one of {', '.join(FUSE_CHOICES)} (true = on, false = off), "
                          f"got {value!r}")
    return value


def resolved(value: str) -> str:
    """The execution a builder applies: "auto" not settled by the trainer means "off"."""
    check_fuse(value)
    return "off" if value == "auto" else value


def has_fuse_option(options) -> bool:
    """True when a method's Options has the ``fuse`` field (the trainer's only question about it)."""
    return hasattr(options, "fuse") and isinstance(getattr(options, "fuse"), str)
