"""One training loop for every method (it never asks which method it runs).

SGD with Nesterov momentum and weight decay; multistep or cosine learning rate with optional linear warm-up, set
every step; bf16 autocast (fp16 with a gradient scaler where the GPU has no bf16) and channels_last on CUDA;
optional ``torch.compile``; evaluation of every ``predict`` key; atomic checkpoints every epoch with every RNG state,
and an exact resume from them, also in the middle of an epoch after SIGTERM; a non-finite loss stops the run and keeps
the last good checkpoint; DDP under ``torchrun``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from peerkd.autofuse import choose_execution, should_measure
from peerkd.config import Config, ConfigError
from peerkd.data.pipeline import build_loaders
from peerkd.fast import FastStep
from peerkd.methods import EpochContext, TaskInfo, build_method
from peerkd.metrics import Evaluator
from peerkd.run import CHECKPOINT, RunError, environment_info, load_checkpoint, save_checkpoint, write_json


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM (or a requested stop) ended training early after saving a checkpoint to resume from."""


# --------------------------------------------------------------------------------------------------- environment

@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Distributed:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, ddp: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: '{name}' asked for, but torch sees no CUDA device; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    return device


PRECISIONS = ("bf16", "fp16", "fp32")  # what trainer.precision resolves to


def resolve_precision(choice: str, device: torch.device) -> str:
    """``trainer.precision`` on ``device``: "auto" is bf16 on a CUDA device that supports it
    (``torch.cuda.is_bf16_supported``: Ampere and later), fp16 (with a gradient scaler) on one that does not (V100,
    T4, RTX 20xx), fp32 on CPU; an explicit bf16 on a CUDA device without it is refused."""
    if choice == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision: bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16; "
                          "use fp16 (autocast with a gradient scaler) or auto")
    if choice not in PRECISIONS:
        raise ConfigError(f"trainer.precision: expected auto, {', '.join(PRECISIONS)}, got {choice!r}")
    return choice


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------------ schedule

def learning_rate(config: Config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) of epoch ``epoch``."""
    sched, base = config.schedule, config.optim.lr
    t = epoch + step / steps_per_epoch  # epochs done so far, fractional
    warm = sched.warmup_epochs
    if warm > 0 and t < warm:
        return base * (epoch * steps_per_epoch + step + 1) / (warm * steps_per_epoch)
    if sched.kind == "cosine":
        span = max(sched.epochs - warm, 1e-12)
        return 0.5 * base * (1 + math.cos(math.pi * min((t - warm) / span, 1.0)))
    return base * sched.gamma ** sum(1 for m in sched.milestones if epoch >= m)


# ----------------------------------------------------------------------------------------------------- the loop

class Trainer:
    """Builds data, method and optimiser from a :class:`Config` and runs (or resumes) the run in ``run_dir``."""

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: bool = False,
                 on_step: Callable[["Trainer"], None] | None = None):
        self.config = config
        self.resume = resume
        self.on_step = on_step
        self.stop_requested = False
        self.ddp = init_distributed("cuda" if config.trainer.device.startswith("cuda") or (
            config.trainer.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(config.trainer.device, self.ddp)
        if config.trainer.threads > 0:
            torch.set_num_threads(config.trainer.threads)
        self.run_dir = Path(run_dir) if run_dir else Path(config.trainer.out) / config.name
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.backends.cudnn.benchmark = config.trainer.cudnn_benchmark
        self.precision = resolve_precision(config.trainer.precision, self.device)
        self.channels_last = config.trainer.channels_last == "on" or (
            config.trainer.channels_last == "auto" and on_cuda)
        self._check_run_dir()
        self._build()

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        has_checkpoint = (self.run_dir / CHECKPOINT).is_file()
        if self.resume and not has_checkpoint:
            raise RunError(f"--resume: {self.run_dir} holds no {CHECKPOINT}; start the run without --resume")
        if not self.resume and has_checkpoint:
            raise RunError(f"{self.run_dir} already holds a run; continue it with --resume, or choose another name "
                           "(--set name=...) or --out folder")

    def _build(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        from peerkd.methods.registry import method_class

        request = method_class(cfg.method.name).data_request(cfg.method.options)
        loaders = build_loaders(cfg.data, request, seed=cfg.seed, device=self.device,
                                channels_last=self.channels_last, rank=self.ddp.rank, world=self.ddp.world)
        self.train_loader, self.test_loader, self.heldout_loader = loaders.train, loaders.test, loaders.heldout
        self.task = TaskInfo(num_classes=loaders.num_classes, image_size=loaders.image_size,
                             num_train=loaders.num_train, restoring=self.resume)
        self.method = self._place(build_method(cfg.method.name, cfg.method.options, self.task))
        self.execution = None  # method.fuse: auto on CUDA -> the measured choice (peerkd/autofuse.py)
        if should_measure(cfg.method.options, self.device):
            self._settle_execution()
        step_module: torch.nn.Module = self.method
        if self.ddp.world > 1:
            step_module = torch.nn.parallel.DistributedDataParallel(
                self.method, find_unused_parameters=self.method.ddp_find_unused_parameters,
                broadcast_buffers=self.method.ddp_broadcast_buffers)
        mode, compile_mode = self._step_mode()
        self.step = FastStep(step_module, self.method.trainable_parameters(), lr=cfg.optim.lr,
                             momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                             weight_decay=cfg.optim.weight_decay, device=self.device, autocast=self.autocast,
                             grad_scaler=self.precision == "fp16", mode=mode, compile_mode=compile_mode,
                             fallback=cfg.trainer.fast == "auto")
        self.optimizer = self.step.optimizer  # checkpoints save and restore this one
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: dict = {"best": {}, "last": {}}

    def _place(self, method: torch.nn.Module) -> torch.nn.Module:
        """``method`` on the run's device, in channels_last when the run uses it."""
        method = method.to(self.device)
        return method.to(memory_format=torch.channels_last) if self.channels_last else method

    def _settle_execution(self) -> None:
        """Measure the method's member executions (off / on / streams / vmap) on the first batch; keep the fastest."""
        cfg = self.config
        build = lambda options: build_method(cfg.method.name, options, self.task)  # noqa: E731
        first_batch = next(iter(self.train_loader.epoch(0)))
        reduce = _sum_over_ranks if self.ddp.world > 1 else None

        def prepare(candidate: torch.nn.Module) -> torch.nn.Module:
            candidate = self._place(candidate)
            candidate.on_epoch_start(0, cfg.schedule.epochs)
            return candidate

        graph = self._step_mode()[0] == "graph"
        self.execution = choose_execution(build, cfg.method.options, self.method, first_batch, device=self.device,
                                          autocast=self.autocast, mode="graph" if graph else "eager",
                                          lr=cfg.optim.lr, prepare=prepare, reduce=reduce)
        if self.execution.choice != "off":
            chosen = self._place(build(dataclasses.replace(cfg.method.options, fuse=self.execution.choice)))
            chosen.load_state_dict(self.method.state_dict())
            self.method = chosen

    def _step_mode(self) -> tuple[str, str | None]:
        """How the training step runs: eager; ``trainer.compile`` compiles it (torch's default mode);
        ``trainer.fast`` (on, or auto on CUDA) compiles it with CUDA graphs ("reduce-overhead") or, with
        ``trainer.fast_mode: graph``, captures the whole step as one CUDA graph. On CPU there is nothing to capture:
        fast runs eagerly."""
        tc = self.config.trainer
        if tc.fast != "off" and self.device.type == "cuda":
            if tc.fast_mode == "graph":
                if self.ddp.world > 1:
                    raise ConfigError("trainer.fast_mode: graph captures one process's step; use compile under DDP")
                return "graph", None
            return "compile", "reduce-overhead"
        if tc.compile:
            return "compile", None
        return "eager", None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "grad_scaler": None if self.step.scaler is None else self.step.scaler.state_dict(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "rng": rng_state(),
                "history": self.history, "config": self.config.to_dict(), "task": dataclasses.asdict(self.task)}

    def save(self) -> None:
        if self.ddp.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT, self.state())

    def restore(self) -> None:
        state = load_checkpoint(self.run_dir / CHECKPOINT, map_location=self.device)
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.step.scaler is not None and state.get("grad_scaler"):
                self.step.scaler.load_state_dict(state["grad_scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise RunError(f"{self.run_dir / CHECKPOINT} does not fit this config ({str(err)[:160]}); resume with "
                           "the run's own config.yaml") from None
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.history = state["global_step"], state["history"]
        set_rng_state(state["rng"])

    # -- logging ----------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        self.writer = None
        if not self.ddp.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config.to_yaml())
        write_json(self.run_dir / "environment.json", environment_info(self.device))
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir))
        if self.execution is not None:
            self.log(self.execution.as_record())
            if self.execution.measured:
                times = ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}"
                                  for k, v in self.execution.ms_per_step.items())
                print(f"method.fuse auto: '{self.execution.choice}' (ms per step timed {self.execution.mode}: "
                      f"{times})", flush=True)

    def log(self, record: dict) -> None:
        if not self.ddp.is_main:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        prefix = record["kind"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step", "global_step"):
                self.writer.add_scalar(f"{prefix}/{key}", value, self.global_step)
            elif isinstance(value, dict):
                for sub, metrics in value.items():
                    for name, number in (metrics.items() if isinstance(metrics, dict) else [("", metrics)]):
                        if isinstance(number, (int, float)):  # None: an execution autofuse could not measure
                            tag = f"{prefix}/{key}/{sub}/{name}".rstrip("/")
                            self.writer.add_scalar(tag, number, self.global_step)

    def _close_logs(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.metrics_file.close()

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader=None) -> dict:
        loader = loader or self.test_loader
        was_training = self.method.training
        self.method.eval()
        evaluator = Evaluator(self.method.diversity_groups())
        for batch in loader:
            with self.autocast():
                predictions = self.method.predict(batch.x)
            evaluator.update(predictions, batch.y)
        self.method.train(was_training)
        return evaluator.compute()

    def _record_eval(self, metrics: dict) -> None:
        for key, values in metrics.items():
            if key == "diversity":
                continue
            best = self.history["best"].get(key)
            if best is None or values["top1"] > best["top1"]:
                self.history["best"][key] = dict(values, epoch=self.epoch)
        self.history["last"] = dict(metrics, epoch=self.epoch)

    # -- training ---------------------------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _stop_now(self) -> bool:
        """True when a stop was requested on any rank (one collective, done at log intervals only under DDP)."""
        if self.ddp.world == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def fit(self) -> dict:
        """Run (or continue) training to the configured number of epochs; return the summary."""
        if self.resume:
            self.restore()
        self._open_logs()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        try:
            self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._close_logs()
        summary = self.summary()
        if self.ddp.is_main:
            write_json(self.run_dir / "summary.json", summary)
        return summary

    def _loop(self) -> None:
        cfg = self.config
        epochs, steps = cfg.schedule.epochs, len(self.train_loader)
        progress = _progress_bar(cfg.trainer.progress, self.ddp.is_main, total=epochs * steps,
                                 initial=self.epoch * steps + self.step_in_epoch)
        self.method.train()
        while self.epoch < epochs:
            if self.step_in_epoch == 0:
                self.method.on_epoch_start(self.epoch, epochs)
            count, tick = 0, time.perf_counter()
            for batch in self.train_loader.epoch(self.epoch, start_step=self.step_in_epoch):
                lr = learning_rate(cfg, self.epoch, self.step_in_epoch, steps)
                self.step.set_lr(lr)
                self.step(batch)
                count += 1
                self.step_in_epoch += 1
                self.global_step += 1
                if progress is not None:
                    progress.update(1)
                if self.on_step is not None:
                    self.on_step(self)
                at_log = self.step_in_epoch % cfg.trainer.log_every == 0 or self.step_in_epoch == steps
                if at_log:
                    means = self._drain_logs()
                    elapsed = time.perf_counter() - tick
                    self.log({"kind": "train", "epoch": self.epoch, "step": self.step_in_epoch,
                              "global_step": self.global_step, "lr": lr,
                              "images_per_s": count * cfg.data.batch_size / max(elapsed, 1e-9), **means})
                    count, tick = 0, time.perf_counter()
                if (at_log or self.ddp.world == 1) and self._stop_now():
                    self._drain_logs()
                    self.save()
                    raise TrainingInterrupted(
                        f"stopped at epoch {self.epoch + 1}/{epochs}, step {self.step_in_epoch}/{steps}; checkpoint "
                        f"saved: continue with `peerkd train --resume {self.run_dir}`")
            self.method.eval()
            with torch.no_grad():
                self.method.on_epoch_end(EpochContext(self.epoch, epochs, self.device, self.heldout_loader,
                                                      self.autocast, self.ddp.world))
            self.method.train()
            last = self.epoch + 1 == epochs
            if (self.epoch + 1) % cfg.trainer.eval_every == 0 or last:
                metrics = self.evaluate()
                self._record_eval(metrics)
                self.log({"kind": "eval", "epoch": self.epoch, "global_step": self.global_step, "metrics": metrics})
                if progress is not None:
                    progress.set_postfix_str(_short(metrics))
            self.epoch += 1
            self.step_in_epoch = 0
            self.save()
        if progress is not None:
            progress.close()

    def _drain_logs(self) -> dict[str, float]:
        """The mean loss parts since the last call (one host sync); stops the run if any loss was not finite."""
        means, _, bad = self.step.drain_logs()
        if bad:
            raise NonFiniteLossError(
                f"the loss became non-finite in epoch {self.epoch + 1} (before step {self.step_in_epoch}); the last "
                f"good checkpoint ({self.run_dir / CHECKPOINT}, epoch {self.epoch}) is kept. Lower optim.lr, add "
                "schedule.warmup_epochs, or use trainer.precision=fp32, then resume with --resume")
        return means

    def summary(self) -> dict:
        last = {k: v for k, v in self.history["last"].items() if k not in ("epoch", "diversity")}
        out = {"name": self.config.name, "method": self.config.method.name, "epochs": self.epoch,
               "last_epoch": self.history["last"].get("epoch"), "keys": {}}
        for key, metrics in last.items():
            out["keys"][key] = {"last": metrics, "best": self.history["best"].get(key)}
        if "diversity" in self.history["last"]:
            out["diversity"] = self.history["last"]["diversity"]
        return out


def _sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values)
    return values


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _short(metrics: dict) -> str:
    return " ".join(f"{k}={v['top1']:.1f}" for k, v in metrics.items() if k != "diversity")


def _progress_bar(mode: str, is_main: bool, total: int, initial: int):
    if not is_main or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(config: Config, run_dir: str | Path | None = None, resume: bool = False,
          on_step: Callable[[Trainer], None] | None = None) -> dict:
    """Train (or, with ``resume``, continue) the run described by ``config``; return its summary."""
    return Trainer(config, run_dir=run_dir, resume=resume, on_step=on_step).fit()
