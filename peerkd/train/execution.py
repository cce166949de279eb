"""``method.fuse: auto``: measure the executions of a method's identical members on the run's device and keep the
fastest.

Whether one fused module (grouped convolutions), or one vmapped forward over stacked members (the path for module
types fusion cannot translate), beats separate modules, on CUDA streams or not, depends on the shape (network, peers,
batch, device): fusion saves launches but grouped convolutions run other kernels than dense ones. So the trainer
measures instead of guessing. For each of "off", "on", "streams", "vmap" it builds the method, loads the
weights of the run's own initial method (every execution keeps the same state_dict keys), and times ``steps`` full
training steps (forward, loss, backward, SGD update through :class:`peerkd.train.step.FastStep`, the run's precision) on
the run's first batch after ``warmup`` untimed ones; in ``trainer.fast_mode: graph`` the timed steps are graph
replays, as in the run. In compile mode the steps are eager (compiling three variants would cost minutes); the
ranking is then that of eager execution. The throwaway copies never touch the run: its weights, and every random
number generator, are as they were before the measurement.

On a CPU "auto" is "off" without measuring (grouped convolutions are slower than separate ones there:
BENCHMARKS.md). Under DDP every rank measures and the times are summed over ranks, so all ranks pick the same.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from peerkd.train.setup import rng_state, set_rng_state
from peerkd.train.step import FastStep
from peerkd.models.execution import MEASURED_CHOICES

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
        return {"kind": "execution", "fuse": self.choice, "timed_in": self.mode,
                "ms_per_step": {k: (None if v is None else round(v, 3)) for k, v in self.ms_per_step.items()}}


def should_measure(options, device: torch.device) -> bool:
    """True when the method has a ``fuse`` option set to "auto" and the run is on CUDA."""
    from peerkd.models.execution import has_fuse_option

    return has_fuse_option(options) and options.fuse == "auto" and device.type == "cuda"


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
    """True when ``method`` holds a member group of two or more members executing as ``choice``."""
    from peerkd.models.members import FusedMembers, StreamedMembers, VmappedMembers

    if choice == "off":
        return True
    kind = {"on": FusedMembers, "streams": StreamedMembers, "vmap": VmappedMembers}[choice]
    return any(isinstance(module, kind) and len(module) > 1 for module in method.modules())


def _candidates(build: Callable[[object], nn.Module], options) -> dict[str, nn.Module]:
    """The method built in every execution that differs from "off" (and "off" itself, which must build)."""
    candidates = {}
    for choice in MEASURED_CHOICES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "runs unfused" warnings: such a candidate is dropped just below
                candidate = build(replace(options, fuse=choice))
        except Exception as err:  # noqa: BLE001
            if choice == "off":
                raise
            _not_chosen(choice, err)
            continue
        if _executes_as(candidate, choice):
            candidates[choice] = candidate
    return candidates


def _not_chosen(choice: str, err: Exception) -> None:
    warnings.warn(f"method.fuse auto: the '{choice}' execution could not be measured ({type(err).__name__}: "
                  f"{str(err)[:160]}); it is not chosen", RuntimeWarning, stacklevel=3)


def choose_execution(build: Callable[[object], nn.Module], options, reference: nn.Module, batch, *,
                     device: torch.device, autocast=None, mode: str = "eager", lr: float = 0.1,
                     prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
                     warmup: int = MEASURE_WARMUP_STEPS, steps: int = MEASURE_STEPS,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ExecutionChoice:
    """Time each execution of the method ``build(options with fuse=...)`` and return the fastest.

    reference: the run's method as built (its state_dict seeds every candidate, so they compute the same thing).
    prepare: moves a candidate to the run's device and memory format (the trainer's ``.to(...)`` calls).
    mode: the FastStep mode to time in ("graph" when the run captures graphs, else "eager").
    reduce: sums a tensor of times over DDP ranks (None in one process).
    An execution that fails to build or step, or that has no member group executing that way (one network; "on" for
    a cohort fusion does not cover), is skipped; "off" always runs, unless nothing else is left to compare it with.
    """
    saved_rng = rng_state()
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    times: dict[str, float | None] = {choice: None for choice in MEASURED_CHOICES}
    try:
        candidates = _candidates(build, options)
        if len(candidates) == 1:  # no fused or streamed member group: every execution is "off"
            return ExecutionChoice("off", times, mode)
        for choice, candidate in list(candidates.items()):
            try:
                candidate.load_state_dict(state)
                times[choice] = _timed_steps(candidate, batch, device=device, autocast=autocast, mode=mode, lr=lr,
                                             warmup=warmup, steps=steps, prepare=prepare)
            except Exception as err:  # noqa: BLE001  (a candidate that cannot run is not chosen; "off" re-raises)
                if choice == "off":
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
