"""The trainer's training step (``trainer.step``): forward, every loss, backward and the SGD update with no host
synchronisation, static shapes, and the learning rate read from a device tensor.

A step written the usual way (``torch.optim.SGD`` whose ``group["lr"]`` is set from Python, logs summed as Python
numbers) is fine eagerly but cannot be captured. :class:`FastStep`, the one step the trainer runs in every mode, keeps
everything the step touches on the device:

- the learning rate is a 0-dim tensor that the optimiser reads (``set_lr`` writes it in place: one tiny copy, no
  sync), so a captured graph sees each new value;
- the loss parts are summed on the device (``drain_logs`` reads them once per log interval);
- a non-finite loss is or-ed into a device flag, checked when the logs are drained;
- SGD is the fused kernel on CUDA (one launch for every parameter) and the foreach kernels elsewhere;
- with ``grad_scaler`` (fp16 autocast: ``trainer.precision: fp16``, or "auto" on a GPU without bf16) the loss is
  scaled before backward and the step goes through ``torch.amp.GradScaler``: on CUDA the fused SGD takes the scale and
  the inf flag as tensors (``_step_supports_amp_scaling``), so the step skips itself on overflow and the scale grows or
  backs off in place with no host sync, graph-capturable; elsewhere the scaler checks the inf flag on the host.

Three ways to run the same step function (``mode``; the trainer maps ``trainer.step`` onto them):

- ``"eager"``: call it as it is (``trainer.step: eager``, and ``auto`` off CUDA; on CPU in fp32 it gives exactly the
  parameters of a plain ``torch.optim.SGD`` loop with a float lr: tests/training/test_sgd_reference.py);
- ``"compile"``: ``torch.compile`` it (``trainer.step: compile``, and ``auto`` on CUDA; ``compile_mode=
  "reduce-overhead"`` on CUDA records CUDA graphs for the compiled regions; the backward call splits the step into a
  forward graph, its AOT backward and the optimiser);
- ``"graph"`` (``trainer.step: graph``): capture the whole step (forward, backward, optimiser, log sums) as one CUDA
  graph after ``warmup_steps`` eager steps on a side stream, then replay it with each batch copied into static
  inputs. CUDA only, one process (no DDP), static batch shapes (the device loader drops the last partial batch).

With ``fallback=True`` (the trainer's ``trainer.step: auto``) a compile or capture that fails on its first use
warns once and the step goes on eagerly: a run that asked for nothing in particular never dies of the fast path.
The failed call is repeated eagerly; at worst that step's forward ran twice (BatchNorm's running statistics saw the
batch twice), nothing else.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import fields
from typing import Callable

import torch
from torch import nn

from peerkd.data.batch import Batch

_BATCH_FIELDS = tuple(f.name for f in fields(Batch))  # x, y, index, y_b, lam: the tensors a step reads


def build_sgd(params, lr: torch.Tensor, momentum: float, nesterov: bool, weight_decay: float,
              device: torch.device) -> torch.optim.SGD:
    """SGD reading its learning rate from the device tensor ``lr``: fused on CUDA, foreach elsewhere (the same
    arithmetic as the per-parameter loop; the fused kernel is one launch for all parameters)."""
    on_cuda = torch.device(device).type == "cuda"
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                           fused=True if on_cuda else None, foreach=None if on_cuda else True)


class FastStep:
    """One training step of ``module`` (a Method, or its DDP / compiled wrapper) with its own SGD optimiser.

    module: called as ``module(batch) -> StepOutput``; its trained parameters are ``params``.
    lr: the first learning rate (``set_lr`` changes it every step).
    autocast: a context-manager factory (the trainer's ``autocast``), or None for full precision.
    grad_scaler: scale the loss and step through a ``torch.amp.GradScaler`` (fp16 autocast), kept in ``scaler``.
    mode: ``"eager"``, ``"compile"`` or ``"graph"`` (see the module docstring).
    compile_mode: ``torch.compile``'s mode in ``"compile"`` mode (None is torch's default; "reduce-overhead" on CUDA).
    compile_backend: ``torch.compile``'s backend ("inductor", torch's default, generates kernels; "aot_eager" traces
        the same graphs without code generation, for quick checks of the capture).
    warmup_steps: eager steps before the capture in ``"graph"`` mode (the optimiser's state and autograd's
        buffers must exist before capture; 3 is what PyTorch's CUDA-graph notes use). They are real training steps.
    fallback: when the first compiled call or the capture raises, warn and run eagerly from then on (see above).
    update_scales: ``Method.update_scales()``: parameter groups whose update is multiplied by a 0-dim device tensor
        after the optimiser's step (0: parameters and momentum buffers put back, as if not stepped); see
        :meth:`_scaled_update`.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], *, lr: float, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4, device: torch.device | str = "cpu",
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None, grad_scaler: bool = False,
                 mode: str = "eager", compile_mode: str | None = None, compile_backend: str = "inductor",
                 warmup_steps: int = 3, fallback: bool = False,
                 update_scales: list[tuple[list[nn.Parameter], torch.Tensor]] | None = None):
        if mode not in ("eager", "compile", "graph"):
            raise ValueError(f"FastStep mode must be 'eager', 'compile' or 'graph', got '{mode}'")
        self.device = torch.device(device)
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError("FastStep mode 'graph' captures a CUDA graph and needs a CUDA device; use 'eager' or "
                             "'compile' elsewhere")
        self.module, self.params, self.mode = module, list(params), mode
        self.autocast = autocast or contextlib.nullcontext
        self.lr = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
        self.optimizer = build_sgd(self.params, self.lr, momentum, nesterov, weight_decay, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if grad_scaler else None
        self.update_scales = [(list(group), scale) for group, scale in (update_scales or []) if list(group)]
        self.log_keys: list[str] | None = None  # fixed by the first step: a method logs the same parts every step
        self.log_sums: list[torch.Tensor] = []
        self.steps_since_drain = torch.zeros((), dtype=torch.float32, device=self.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.warmup_steps = warmup_steps
        self.fallback = fallback
        self._proven = False  # True once a compiled call or a replay succeeded: later errors are real errors
        self._compiled = (torch.compile(self._train_step, mode=compile_mode, backend=compile_backend)
                          if mode == "compile" else None)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor | None] = {}
        self._calls = 0

    # -- the step ---------------------------------------------------------------------------------------------
    def _train_step(self, batch: Batch, zero_grads: bool = True) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Forward, loss, backward, update: the function that is compiled or captured. Returns the detached loss
        and the log values in ``log_keys`` order."""
        if zero_grads:
            self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.module(batch)
        self._backward_and_update(out.loss)
        logs = dict(out.logs, loss=out.loss.detach())
        return out.loss.detach(), tuple(logs[key] for key in sorted(logs))

    def _backward_and_update(self, loss: torch.Tensor) -> None:
        """Backward and the SGD update; with the scaler: scaled backward, a step skipped on overflow, scale update."""
        if self.scaler is None:
            loss.backward()
            self._scaled_update(self.optimizer.step)
            return
        self.scaler.scale(loss).backward()
        self._scaled_update(lambda: self.scaler.step(self.optimizer))
        self.scaler.update()

    def _scaled_update(self, step: Callable[[], object]) -> None:
        """``step()`` (the optimiser's), then each ``update_scales`` group's parameters set to
        ``before + s * (after - before)`` with its device scale ``s`` (SGD's update is linear in the learning rate
        and its momentum buffer does not depend on it, so this is the step at ``s`` times the rate), and where
        ``s == 0`` the parameters and momentum buffers put back exactly (``torch.where``): the optimiser did not
        step that group, weight decay and momentum included. A buffer the first step creates counts as zeros
        before it (SGD's first ``buf = d_p`` equals ``0.9 * 0 + d_p``). Tensor arithmetic only: no host sync."""
        if not self.update_scales:
            step()
            return
        saved = []
        for group, scale in self.update_scales:
            for p in group:
                buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                saved.append((p, scale, p.detach().clone(),
                              None if buffer is None else buffer.clone()))
        step()
        with torch.no_grad():
            for p, scale, before, buffer_before in saved:
                paused = scale == 0
                moved = torch.where(scale == 1, p, torch.lerp(before, p, scale.to(p.dtype)))  # 1: bit-exact
                p.copy_(torch.where(paused, before, moved))
                buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None:
                    kept = torch.zeros_like(buffer) if buffer_before is None else buffer_before
                    buffer.copy_(torch.where(paused, kept, buffer))

    def _accumulate(self, loss: torch.Tensor, values: tuple[torch.Tensor, ...]) -> None:
        torch._foreach_add_(self.log_sums, [v.float() for v in values])
        self.steps_since_drain.add_(1)
        self.nonfinite.logical_or_(~torch.isfinite(loss))

    def _first_step(self, batch: Batch) -> None:
        """The first step runs eagerly and fixes the log keys (and allocates their device sums)."""
        with self.autocast():
            out = self.module(batch)
        self.log_keys = sorted(dict(out.logs, loss=out.loss))
        self.log_sums = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in self.log_keys]
        self.optimizer.zero_grad(set_to_none=True)
        self._backward_and_update(out.loss)
        logs = dict(out.logs, loss=out.loss.detach())
        self._accumulate(out.loss.detach(), tuple(logs[key] for key in self.log_keys))

    def __call__(self, batch: Batch) -> None:
        """Train on ``batch`` (one step); nothing is read back to the host."""
        self._calls += 1
        if self.log_keys is None:
            if self.mode == "graph":
                with self._side_stream():
                    self._first_step(batch)
            else:
                self._first_step(batch)
            return
        if self.mode == "eager":
            self._accumulate(*self._train_step(batch))
        elif self.mode == "graph" and self._calls <= self.warmup_steps:
            with self._side_stream():
                self._accumulate(*self._train_step(batch))
        elif self._proven or not self.fallback:
            self._fast_call(batch)
            self._proven = True
        else:
            try:
                self._fast_call(batch)
                self._proven = True
            except Exception as err:  # noqa: BLE001  (any compiler or capture failure: the eager step still works)
                self._fall_back(err)
                self._accumulate(*self._train_step(batch))

    def _fast_call(self, batch: Batch) -> None:
        if self.mode == "compile":
            self._accumulate(*self._compiled(batch))
        else:
            self._replay(batch)

    def _fall_back(self, err: Exception) -> None:
        warnings.warn(f"trainer.step auto: the {self.mode} step failed ({type(err).__name__}: {str(err)[:200]}); "
                      "training goes on with the eager step (set trainer.step=eager to skip the attempt, or report "
                      "this)", RuntimeWarning, stacklevel=3)
        if self.mode == "graph":
            self._graph, self._static = None, {}
            torch.cuda.synchronize(self.device)
        self.mode, self._compiled = "eager", None

    # -- CUDA graph -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _side_stream(self):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _replay(self, batch: Batch) -> None:
        if self._graph is None:
            self._capture(batch)  # capture records without running: replay below runs this batch
        for name in _BATCH_FIELDS:
            value, static = getattr(batch, name), self._static[name]
            if (value is None) != (static is None) or (static is not None and value.shape != static.shape):
                raise ValueError(f"FastStep graph mode needs static batches: '{name}' changed from "
                                 f"{None if static is None else tuple(static.shape)} to "
                                 f"{None if value is None else tuple(value.shape)}")
            if static is not None:
                static.copy_(value, non_blocking=True)
        self._graph.replay()

    def _capture(self, batch: Batch) -> None:
        self._static = {name: None if getattr(batch, name) is None else getattr(batch, name).clone()
                        for name in _BATCH_FIELDS}
        static_batch = Batch(**self._static)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it then reuses
        torch.cuda.synchronize(self.device)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._accumulate(*self._train_step(static_batch, zero_grads=False))

    # -- the host side ----------------------------------------------------------------------------------------
    def set_lr(self, value: float) -> None:
        """The learning rate of the next step, written into the device tensor the optimiser reads."""
        for group in self.optimizer.param_groups:
            if group["lr"] is not self.lr:  # load_state_dict replaces it; put the device tensor back (before capture)
                if self._graph is not None:
                    raise RuntimeError("the optimiser's learning rate tensor was replaced after the graph capture")
                group["lr"] = self.lr
        self.lr.fill_(value)

    def drain_logs(self) -> tuple[dict[str, float], int, bool]:
        """Mean of every loss part since the last drain, the number of steps, and whether any loss was non-finite;
        one host synchronisation. The sums restart from zero."""
        if self.log_keys is None:
            return {}, 0, False
        values = torch.stack([*self.log_sums, self.steps_since_drain, self.nonfinite.float()]).tolist()
        count, bad = int(values[-2]), bool(values[-1])
        means = {key: total / max(count, 1) for key, total in zip(self.log_keys, values[:-2])}
        torch._foreach_zero_(self.log_sums)
        self.steps_since_drain.zero_()
        return means, count, bad
