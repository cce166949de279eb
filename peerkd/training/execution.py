"""``trainer.members: auto``: measure the executions of a method's identical members on the run's device and keep the
fastest.

Whether one fused module (grouped convolutions), or one vmapped forward over stacked members (the path for module
types fusion cannot translate), beats separate modules, on CUDA streams or not, depends on the shape (network, peers,
batch, device): fusion saves launches but grouped convolutions run other kernels than dense ones. So the trainer
measures instead of guessing, and only what earns the cost: on CUDA, for a method that holds a member group of two or
more members (:func:`should_measure`; a method without one has nothing to choose). For each of "separate", "grouped",
"streams", "vmap" it builds the method inside :func:`peerkd.models.execution.member_execution`, keeps the candidates
that hold a group executing that way, loads the weights of the run's own method (every execution keeps the same
state_dict keys), and times ``steps`` full training steps (forward, loss, backward, SGD update through
:class:`peerkd.training.step.FastStep`, the run's precision) on the run's first batch after ``warmup`` untimed ones;
under ``trainer.step: graph`` the timed steps are graph replays, as in the run. Under compile the steps are eager
(compiling four variants would cost minutes); the ranking is then that of eager execution. The throwaway copies never
touch the run: its weights, and every random number generator, are as they were before the measurement.

On a CPU "auto" is "separate" without measuring (grouped convolutions are slower than separate ones there:
BENCHMARKS.md). Under DDP every rank measures and the times are summed over ranks, so all ranks pick the same.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from peerkd.models.execution import MEMBER_EXECUTIONS, REFERENCE_EXECUTION, member_execution
from peerkd.models.members import FusedMembers, MemberList, StreamedMembers, VmappedMembers
from peerkd.training.setup import rng_state, set_rng_state
from peerkd.training.step import FastStep

MEASURE_WARMUP_STEPS = 3  # untimed steps per execution (cuDNN autotuning, allocator warm-up; graph mode captures)
MEASURE_STEPS = 5  # timed steps per execution: enough to rank variants that differ by tens of percent


@dataclass
class ExecutionChoice:
    """The execution kept and what each candidate measured (ms per training step; None: could not run)."""

    choice: str
    ms_per_step: dict[str, float | None]
    mode: str  # the FastStep mode the steps were timed in

    @property
    def measured(self) -> bool:
        return any(v is not None for v in self.ms_per_step.values())

    def as_record(self) -> dict:
        """The metrics.jsonl record of the choice."""
        return {"kind": "execution", "members": self.choice, "timed_in": self.mode,
                "ms_per_step": {k: (None if v is None else round(v, 3)) for k, v in self.ms_per_step.items()}}

    def describe(self) -> str:
        """The line the trainer prints: the choice and every candidate's time."""
        times = ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in self.ms_per_step.items())
        return f"trainer.members auto: '{self.choice}' (ms per step timed {self.mode}: {times})"


_GROUP_TYPES = {"separate": MemberList, "grouped": FusedMembers, "streams": StreamedMembers, "vmap": VmappedMembers}


def member_groups(method: nn.Module, execution: str | None = None) -> list[nn.Module]:
    """The member groups of two or more members in ``method`` (those executing as ``execution`` when given)."""
    kinds = tuple(_GROUP_TYPES.values()) if execution is None else _GROUP_TYPES[execution]
    return [module for module in method.modules() if isinstance(module, kinds) and len(module) > 1]


def should_measure(method: nn.Module, device: torch.device) -> bool:
    """True when ``trainer.members: auto`` has something to measure: the run is on CUDA and ``method`` (as built)
    holds a member group of two or more members."""
    return device.type == "cuda" and bool(member_groups(method))


def _timed_steps(method: nn.Module, batch, *, device: torch.device, autocast, mode: str, lr: float,
                 warmup: int, steps: int, prepare: Callable[[nn.Module], nn.Module]) -> float:
    method = prepare(method).train()
    step = FastStep(method, [p for p in method.parameters() if p.requires_grad], lr=lr, device=device,
                    autocast=autocast, mode=mode, warmup_steps=max(warmup - 1, 1))
    for _ in range(warmup):
        step(batch)
    _synchronize(device)
    tick = time.perf_counter()
    for _ in range(steps):
        step(batch)
    _synchronize(device)
    return 1000 * (time.perf_counter() - tick) / steps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _executes_as(method: nn.Module, choice: str) -> bool:
    """True when ``method`` holds a member group of two or more members executing as ``choice`` (always, for the
    reference "separate", which is measured whatever it holds)."""
    return choice == REFERENCE_EXECUTION or bool(member_groups(method, choice))


def build_in(build: Callable[[], nn.Module], execution: str) -> nn.Module:
    """``build()`` inside :func:`member_execution` ``(execution)``: the method with its member groups executing so."""
    with member_execution(execution):
        return build()


def _candidates(build: Callable[[], nn.Module]) -> dict[str, nn.Module]:
    """The method built in every execution that differs from "separate" (and "separate" itself, which must build)."""
    candidates = {}
    for choice in MEMBER_EXECUTIONS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "runs separately" warnings: such a candidate is dropped just below
                candidate = build_in(build, choice)
        except Exception as err:  # noqa: BLE001
            if choice == REFERENCE_EXECUTION:
                raise
            _not_chosen(choice, err)
            continue
        if _executes_as(candidate, choice):
            candidates[choice] = candidate
    return candidates


def _not_chosen(choice: str, err: Exception) -> None:
    warnings.warn(f"trainer.members auto: the '{choice}' execution could not be measured ({type(err).__name__}: "
                  f"{str(err)[:160]}); it is not chosen", RuntimeWarning, stacklevel=3)


def choose_execution(build: Callable[[], nn.Module], reference: nn.Module, batch, *,
                     device: torch.device, autocast=None, mode: str = "eager", lr: float = 0.1,
                     prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
                     warmup: int = MEASURE_WARMUP_STEPS, steps: int = MEASURE_STEPS,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ExecutionChoice:
    """Time each execution of the method ``build()`` (called inside :func:`member_execution`) and return the fastest.

    reference: the run's method as built (its state_dict seeds every candidate, so they compute the same thing).
    prepare: moves a candidate to the run's device and memory format (the trainer's ``.to(...)`` calls).
    mode: the FastStep mode to time in ("graph" when the run captures graphs, else "eager").
    reduce: sums a tensor of times over DDP ranks (None in one process).
    An execution that fails to build or step, or that has no member group executing that way (one network; "grouped"
    for a cohort fusion does not cover), is skipped; "separate" always runs, unless nothing else is left to compare it
    with.
    """
    saved_rng = rng_state()
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    times: dict[str, float | None] = {choice: None for choice in MEMBER_EXECUTIONS}
    try:
        candidates = _candidates(build)
        if len(candidates) == 1:  # no member group executes another way: every execution is "separate"
            return ExecutionChoice(REFERENCE_EXECUTION, times, mode)
        for choice, candidate in list(candidates.items()):
            try:
                candidate.load_state_dict(state)
                times[choice] = _timed_steps(candidate, batch, device=device, autocast=autocast, mode=mode, lr=lr,
                                             warmup=warmup, steps=steps, prepare=prepare)
            except Exception as err:  # noqa: BLE001  (a candidate that cannot run is not chosen; "separate" re-raises)
                if choice == REFERENCE_EXECUTION:
                    raise
                _not_chosen(choice, err)
            finally:
                del candidates[choice], candidate
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        set_rng_state(saved_rng)
    if reduce is not None:
        flat = torch.tensor([float("inf") if v is None else v for v in times.values()], device=device)
        summed = reduce(flat).tolist()
        times = {k: (None if v == float("inf") else v) for k, v in zip(times, summed)}
    measured = {k: v for k, v in times.items() if v is not None}
    return ExecutionChoice(min(measured, key=measured.get), times, mode)
