"""How a method's identical members (peers, or the tails of a branched network) execute: ``trainer.members``.

The execution is a run setting, not a method option: whoever builds a method sets it around the build,

    with member_execution("grouped"):
        method = build_method(name, options, task)

and the builders of member groups read it (:func:`current_member_execution`):
:func:`peerkd.models.members.build_members` (every group of identical modules: cohorts, branch tails, OKDDip's
network-based peers, CL's head tree),
:func:`peerkd.models.branched_cohort.branched_cohort` (CSS's networks: identical ones group as one trunk group and one
group of all tails) and :func:`peerkd.methods.parts.cohort.build_cohort` (a heterogeneous cohort cannot group). A
method's code never mentions it, and neither its maths, nor its state_dict keys, nor its exported models change with
it:

- ``"separate"``: separate modules, one after another (the reference execution, and the one outside any context);
- ``"grouped"``: one fused module (:mod:`peerkd.models.fused`: grouped convolutions, one BatchNorm over all copies'
  channels, batched heads);
- ``"streams"``: separate modules, each on its own CUDA stream so their kernels may overlap (on CPU: one after
  another);
- ``"vmap"``: the members' tensors stacked and one member's forward vectorised over them (``torch.func``: any module
  type, BatchNorm included; :class:`peerkd.models.members.VmappedMembers`).

``trainer.members: auto`` is the trainer's business (:mod:`peerkd.training.execution`): on CUDA it measures these four
on the run's first batch and keeps the fastest; on a CPU it is "separate" without measuring (grouped convolutions are
slower than separate ones there: BENCHMARKS.md). Members that cannot group (heterogeneous members, a module type the
fusion translator does not know) run separately, with a warning.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

MEMBER_EXECUTIONS = ("separate", "grouped", "streams", "vmap")  # how a member group can run; "auto" picks one of them
REFERENCE_EXECUTION = "separate"  # the execution outside any member_execution context: plain modules, one by one

_CURRENT: ContextVar[str] = ContextVar("peerkd_member_execution", default=REFERENCE_EXECUTION)


def check_member_execution(execution: str) -> str:
    """``execution`` if it is one of :data:`MEMBER_EXECUTIONS`, else a ValueError naming them ("auto" is resolved by
    the trainer before any build)."""
    if execution not in MEMBER_EXECUTIONS:
        raise ValueError(f"member execution must be one of {', '.join(MEMBER_EXECUTIONS)}, got {execution!r}")
    return execution


@contextlib.contextmanager
def member_execution(execution: str) -> Iterator[str]:
    """Inside the block, every member group built executes as ``execution``; the previous one is back after it."""
    token = _CURRENT.set(check_member_execution(execution))
    try:
        yield execution
    finally:
        _CURRENT.reset(token)


def current_member_execution() -> str:
    """The execution a member group built now takes: the innermost :func:`member_execution`'s, else "separate"."""
    return _CURRENT.get()


__all__ = ["MEMBER_EXECUTIONS", "REFERENCE_EXECUTION", "check_member_execution", "current_member_execution",
           "member_execution"]
