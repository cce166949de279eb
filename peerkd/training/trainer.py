"""One training loop for every method (it never asks which method it runs).

SGD with Nesterov momentum and weight decay; multistep or cosine learning rate with optional linear warm-up, set
every step; bf16 autocast (fp16 with a gradient scaler where the GPU has no bf16) and channels_last on CUDA; the
step eager, compiled or captured as one CUDA graph (``trainer.step``); the method's identical members executing as
``trainer.members`` says (set around the method's build, measured on CUDA under "auto"); evaluation (always fp32) of
every ``predict`` key; atomic checkpoints every epoch with every RNG state, and an exact resume from them, also in the
middle of an epoch after SIGTERM; a non-finite loss stops the run and keeps the last good checkpoint; DDP under
``torchrun``.

The run folder is taken before any set-up (:mod:`peerkd.training.run_folder`: writable, locked, a peerkd run or empty,
the config of a resume checked against the checkpoint's). Under DDP rank 0 alone takes it and writes; the other ranks
get its verdict (the same error, or whether the run resumes) by one broadcast. A write that finds the disk full ends the
run with one line naming the folder and the checkpoint kept.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from peerkd.models.execution import REFERENCE_EXECUTION
from peerkd.training.execution import build_in, choose_execution, should_measure
from peerkd.config import Config
from peerkd.core.errors import ConfigError
from peerkd.core.process import is_main_thread
from peerkd.data.pipeline import build_loaders
from peerkd.training.step import FastStep
from peerkd.core.method import EpochContext, TaskInfo
from peerkd.core.registry import build_method
from peerkd.metrics import EvalResult, Evaluator
from peerkd.params import parameter_summary
from peerkd.core.run_files import CHECKPOINT, CONFIG_FILE, ENVIRONMENT_FILE, METRICS_LOG, SUMMARY_FILE
from peerkd.training.checkpoint import (RunError, environment_info, has_checkpoint, load_checkpoint, save_checkpoint,
                                     write_json)
from peerkd.training.setup import (Distributed, init_distributed, resolve_device, resolve_precision, rng_state,  # noqa: F401
                                 seed_everything, set_rng_state)
from peerkd.training.run_folder import OUT_OF_SPACE, Claim, append_history, claim_run_folder, truncate_metrics
from peerkd.training.loggers import Trackers, run_name, scalars


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM, SIGINT (Ctrl-C) or a requested stop ended training early after saving a checkpoint to resume from;
    ``signum`` is the signal that asked (None for a stop requested in code)."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # each asks for a checkpoint at the next step, then a clean exit


# --------------------------------------------------------------------------------------------------- environment


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
                 on_step: Callable[["Trainer"], None] | None = None, claim: bool = True):
        """``claim``: take the run folder for writing (lock it, check it); False for a reader such as
        ``peerkd eval``, which only needs the checkpoint there."""
        self.config = config
        self.resume = resume
        self.on_step = on_step
        self.stop_requested = False
        self.stop_signal: int | None = None  # the signal that requested the stop
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
        self.step_mode, self.compile_mode, self.step_fallback = self._step_mode()  # refused before the run folder
        self.claim: Claim | None = None
        self._resumed: dict | None = None  # the checkpoint a resume starts from, loaded once (_resume_state)
        self.last_saved: tuple[int, int] | None = None  # (epoch, step in epoch) of the last checkpoint on disk
        self.trackers: Trackers | None = None  # rank 0's experiment trackers (trainer.loggers), started at the claim
        self.environment: dict | None = None  # environment_info, rank 0, computed once
        if claim:
            self._claim_run_dir()
        else:
            self._check_run_dir()
        try:
            self._build()
        except BaseException:
            self._finish_trackers(ok=False)
            self.release(started=False)
            raise

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        if self.resume and not has_checkpoint(self.run_dir):
            raise RunError(f"--resume: {self.run_dir} holds no {CHECKPOINT}; start the run without --resume")

    def _claim_run_dir(self) -> None:
        """Rank 0 takes the run folder (peerkd.training.run_folder.claim_run_folder); every rank learns the outcome."""
        verdict: dict = {}
        error: BaseException | None = None
        if self.ddp.is_main:
            try:
                self.claim = claim_run_folder(self.run_dir, self.config, self.resume)
                verdict = {"resume": self.claim.resume}
                self._start_trackers()  # before any work: a tracker that cannot start stops the run here
            except (RunError, ConfigError) as err:
                error, verdict = err, {"error": str(err)}
                self.release(started=False)
        if self.ddp.world > 1:
            box = [verdict]
            dist.broadcast_object_list(box, src=0)
            verdict = box[0]
        if error is not None:
            raise error
        if "error" in verdict:
            raise RunError(verdict["error"])
        self.resume = verdict["resume"]

    def _start_trackers(self) -> None:
        """Rank 0: start the trackers of trainer.loggers (peerkd/training/loggers.py); a resume continues the
        tracked runs whose ids its checkpoint keeps."""
        trainer = self.config.trainer
        saved = (self.claim.state or {}).get("trackers") if self.claim is not None and self.claim.resume else None
        self.environment = environment_info(self.device)
        self.trackers = Trackers(trainer.loggers, trainer.loggers_required, trainer.tracker_project,
                                 run_name(self.run_dir), saved)
        self.trackers.start(self.config.to_dict(), self.environment)

    def _finish_trackers(self, ok: bool) -> None:
        if self.trackers is not None:
            self.trackers.finish(ok)

    def release(self, started: bool = True) -> None:
        """Give the run folder back (its lock; a folder created for a run that never started is removed)."""
        if self.claim is not None:
            claim, self.claim = self.claim, None
            claim.release(started)

    def _build(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        from peerkd.core.registry import method_class

        request = method_class(cfg.method.name).data_request(cfg.method.options)
        loaders = build_loaders(cfg.data, request, seed=cfg.seed, device=self.device,
                                channels_last=self.channels_last, rank=self.ddp.rank, world=self.ddp.world)
        self.train_loader, self.test_loader, self.heldout_loader = loaders.train, loaders.test, loaders.heldout
        # what evaluate() scores by default (data.eval_split): the test set, or the held-out split (no test loader)
        self.eval_loader = loaders.heldout if cfg.data.eval_split == "heldout" else loaders.test
        self.task = TaskInfo(num_classes=loaders.num_classes, image_size=loaders.image_size,
                             num_train=loaders.num_train, restoring=self.resume)
        # how a deployed model must be fed (peerkd export): RGB NCHW, (pixel / 255 - mean) / std
        self.input_spec = {"image_size": loaders.image_size, "mean": [float(m) for m in loaders.mean],
                           "std": [float(s) for s in loaders.std]}
        build = lambda: build_method(cfg.method.name, cfg.method.options, self.task)  # noqa: E731
        members = cfg.trainer.members
        if members == "auto" and self.resume:  # the execution the run chose: its optimizer state has that layout
            members = self._resume_state().get("members", "auto")  # (a checkpoint older than the record: measure)
        self.members = REFERENCE_EXECUTION if members == "auto" else members  # the execution built
        self.method = self._place(build_in(build, self.members))
        self.execution = None  # trainer.members auto with member groups on CUDA: the measured choice
        if members == "auto" and should_measure(self.method, self.device):
            self._settle_execution(build)
        step_module: torch.nn.Module = self.method
        if self.ddp.world > 1:
            step_module = torch.nn.parallel.DistributedDataParallel(
                self.method, find_unused_parameters=self.method.ddp_find_unused_parameters,
                broadcast_buffers=self.method.ddp_broadcast_buffers)
        self.step = FastStep(step_module, self.method.trainable_parameters(), lr=cfg.optim.lr,
                             momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                             weight_decay=cfg.optim.weight_decay, device=self.device, autocast=self.autocast,
                             grad_scaler=self.precision == "fp16", mode=self.step_mode,
                             compile_mode=self.compile_mode, fallback=self.step_fallback,
                             update_scales=self.method.update_scales())
        self.optimizer = self.step.optimizer  # checkpoints save and restore this one
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: dict = {"best": {}, "last": {}}

    def _place(self, method: torch.nn.Module) -> torch.nn.Module:
        """``method`` on the run's device, in channels_last when the run uses it."""
        method = method.to(self.device)
        return method.to(memory_format=torch.channels_last) if self.channels_last else method

    def _settle_execution(self, build: Callable[[], torch.nn.Module]) -> None:
        """Measure the method's member executions (separate / grouped / streams / vmap) on the first batch; keep the
        fastest (peerkd/training/execution.py). ``build`` builds the method; the measurement sets its execution."""
        cfg = self.config
        first_batch = next(iter(self.train_loader.epoch(0)))
        reduce = _sum_over_ranks if self.ddp.world > 1 else None

        def prepare(candidate: torch.nn.Module) -> torch.nn.Module:
            candidate = self._place(candidate)
            candidate.on_epoch_start(0, cfg.schedule.epochs)
            return candidate

        timed_in = "graph" if self.step_mode == "graph" else "eager"  # compiling four candidates would cost minutes
        self.execution = choose_execution(build, self.method, first_batch, device=self.device, autocast=self.autocast,
                                          mode=timed_in, lr=cfg.optim.lr, prepare=prepare, reduce=reduce)
        if self.execution.choice != REFERENCE_EXECUTION:
            saved = rng_state()  # the rebuild's initial weights are replaced: it draws for nothing
            chosen = self._place(build_in(build, self.execution.choice))
            set_rng_state(saved)
            chosen.load_state_dict(self.method.state_dict())
            self.method, self.members = chosen, self.execution.choice

    def _step_mode(self) -> tuple[str, str | None, bool]:
        """``(FastStep mode, torch.compile mode, fall back to eager on failure)`` for ``trainer.step`` on the run's
        device: "auto" compiles with CUDA graphs ("reduce-overhead") on CUDA, falling back to eager if that fails, and
        is eager elsewhere (nothing to capture); "compile" compiles ("reduce-overhead" on CUDA, torch's default mode
        elsewhere) with no fallback; "graph" captures the whole step as one CUDA graph (CUDA only, one process)."""
        step, on_cuda = self.config.trainer.step, self.device.type == "cuda"
        if step == "graph":
            if not on_cuda:
                raise ConfigError(f"trainer.step: graph captures a CUDA graph, and this run is on {self.device}; use "
                                  "auto, eager or compile")
            if self.ddp.world > 1:
                raise ConfigError("trainer.step: graph captures one process's step; use compile under DDP")
            return "graph", None, False
        if step == "compile":
            return "compile", "reduce-overhead" if on_cuda else None, False
        if step == "auto" and on_cuda:
            return "compile", "reduce-overhead", True
        return "eager", None, False

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "grad_scaler": None if self.step.scaler is None else self.step.scaler.state_dict(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "rng": rng_state(),
                "history": self.history, "config": self.config.to_dict(), "task": dataclasses.asdict(self.task),
                "input": self.input_spec, "members": self.members,
                "trackers": dict(self.trackers.ids) if self.trackers is not None else {}}

    def save(self) -> None:
        if self.ddp.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT, self.state())
        self.last_saved = (self.epoch, self.step_in_epoch)

    def _resume_state(self) -> dict:
        """The checkpoint this run resumes from, loaded once: rank 0 loaded (and checked) it when it took the folder;
        another rank, or a reader, loads it here."""
        if self._resumed is None:
            if self.claim is not None and self.claim.state is not None:
                self._resumed, self.claim.state = self.claim.state, None
            else:
                self._resumed = load_checkpoint(self.run_dir / CHECKPOINT, map_location=self.device,
                                                warn=self.ddp.is_main)
        return self._resumed

    def restore(self) -> None:
        state, self._resumed = self._resume_state(), None
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.step.scaler is not None and state.get("grad_scaler"):
                self.step.scaler.load_state_dict(state["grad_scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            trained = state.get("members", self.members)
            if trained != self.members:  # grouped and vmapped members hold their parameters (and momenta) stacked
                raise RunError(f"{self.run_dir / CHECKPOINT} was trained with trainer.members {trained}, whose "
                               f"optimizer state does not load into {self.members} members; resume with "
                               f"--set trainer.members={trained} (or auto)") from None
            raise RunError(f"{self.run_dir / CHECKPOINT} does not fit this config ({str(err)[:160]}); resume with "
                           f"the run's own {CONFIG_FILE}") from None
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.history = state["global_step"], state["history"]
        set_rng_state(state["rng"])
        self.last_saved = (self.epoch, self.step_in_epoch)

    # -- logging ----------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        self.writer = None
        if not self.ddp.is_main:
            return
        environment = self.environment or environment_info(self.device)
        # what peerkd report shows beside every result: how many processes trained it and in which precision
        environment.update(world_size=self.ddp.world, precision=self.precision)
        claim = self.claim
        record = {"event": "resume" if self.resume else "start", "epoch": self.epoch, "step": self.step_in_epoch,
                  "global_step": self.global_step, "argv": environment["argv"], "git_sha": environment["git_sha"],
                  "peerkd": environment["peerkd"], "torch": environment["torch"], "device": environment["device"]}
        if claim is not None and claim.restart:
            record["torchrun_restart"] = claim.restart
        if self.resume:  # config.yaml stays the run's; what this resume changed goes to history.jsonl
            record["changed"] = claim.changed if claim is not None else {}
            if claim is not None and claim.source is not None and claim.source.name != CHECKPOINT:
                record["from"] = claim.source.name
            truncate_metrics(self.run_dir, self.global_step)  # the steps past the checkpoint are trained again
        else:
            (self.run_dir / CONFIG_FILE).write_text(self.config.to_yaml())
            write_json(self.run_dir / ENVIRONMENT_FILE, environment)
        append_history(self.run_dir, record)
        self.metrics_file = open(self.run_dir / METRICS_LOG, "a")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events a killed session logged past the checkpoint's step
        if "tensorboard" in self.config.trainer.loggers:
            self.writer = SummaryWriter(str(self.run_dir), purge_step=self.global_step + 1 if self.resume else None)
        if self.trackers is not None and not self.resume:  # counts known before any evaluation (per key: at the end)
            params = parameter_summary(self.method, [])
            self.trackers.log({"kind": "params", "trained": params["trained"], "exported": params["exported"]},
                              self.global_step)
        if self.execution is not None:
            self.log(self.execution.as_record())
            if self.execution.measured:
                print(self.execution.describe(), flush=True)

    def log(self, record: dict) -> None:
        if not self.ddp.is_main:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for tag, number in scalars(record).items():  # None (an execution auto could not measure) left out
                self.writer.add_scalar(tag, number, self.global_step)
        if self.trackers is not None:
            self.trackers.log(record, self.global_step)

    def _close_logs(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if getattr(self, "metrics_file", None) is not None:
            self.metrics_file.close()
            self.metrics_file = None

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader=None) -> EvalResult:
        loader = loader or self.eval_loader
        was_training = self.method.training
        self.method.eval()
        evaluator = Evaluator(self.method.diversity_groups(), self.config.trainer.ece_bins)
        for batch in loader:
            # fp32 always, whatever the training precision: no reported number (NLL, ECE, AURC, near-tie top-1)
            # depends on bf16 rounding of the logits; evaluation is a small share of a run's time
            predictions = self.method.predict(batch.x)
            evaluator.update(predictions, batch.y)
        self.method.train(was_training)
        return evaluator.compute()

    def _record_eval(self, result: EvalResult) -> None:
        for key, values in result.keys.items():
            best = self.history["best"].get(key)
            if best is None or values["top1"] > best["top1"]:
                self.history["best"][key] = dict(values, epoch=self.epoch)
        self.history["last"] = dict(result.to_record(), epoch=self.epoch)  # in the checkpoint: the stored form

    # -- training ---------------------------------------------------------------------------------------------
    def _on_stop_signal(self, signum, frame) -> None:
        """SIGTERM or SIGINT: stop at the next step with a checkpoint. A second Ctrl-C stops at once (the
        checkpoint on disk, written atomically, stays as it was)."""
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.stop_signal = signum

    def _stop_now(self) -> bool:
        """True when a stop was requested on any rank (one collective, done at log intervals only under DDP)."""
        if self.ddp.world == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def fit(self) -> dict:
        """Run (or continue) training to the configured number of epochs; return the summary. The run folder is
        given back at the end, however training ends."""
        try:
            return self._fit()
        except OSError as err:
            if err.errno in OUT_OF_SPACE:
                raise RunError(self._out_of_space(err)) from None
            raise
        finally:
            self._finish_trackers(ok=False)  # a run that did not end well (after a good end: nothing left open)
            self.release()

    def _out_of_space(self, err: OSError) -> str:
        where = f" (writing {Path(err.filename).name})" if err.filename else ""
        if self.last_saved is None:
            kept = "no checkpoint was saved yet"
        else:
            epoch, step = self.last_saved
            kept = f"the last checkpoint ({CHECKPOINT}: {epoch} epochs" + (f" and {step} steps" if step else "") + \
                " done) is kept"
        return (f"no space left on the device of {self.run_dir}{where}; {kept}. Free some space, then "
                f"continue with `peerkd train --resume {self.run_dir}`")

    def _fit(self) -> dict:
        if self.resume:
            self.restore()
        self._open_logs()
        previous = {s: signal.signal(s, self._on_stop_signal) for s in STOP_SIGNALS} if is_main_thread() else {}
        try:
            self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close_logs()
        summary = self.summary()
        if self.ddp.is_main:
            write_json(self.run_dir / SUMMARY_FILE, summary)
        if self.trackers is not None:  # the parameter counts of every predict key, then the tracked run is done
            self.trackers.log({"kind": "params", **summary["params"]}, self.global_step)
            self.trackers.finish(ok=True)
        return summary

    def _loop(self) -> None:
        cfg = self.config
        epochs, steps = cfg.schedule.epochs, len(self.train_loader)
        progress = _progress_bar(cfg.trainer.progress, self.ddp.is_main, total=epochs * steps,
                                 initial=self.epoch * steps + self.step_in_epoch)
        epoch_lines = EpochLines(epochs, steps) if progress is None and self.ddp.is_main else None
        self.method.train()
        while self.epoch < epochs:
            if self.step_in_epoch == 0:
                self.method.on_epoch_start(self.epoch, epochs)
            if epoch_lines is not None:
                epoch_lines.start(steps - self.step_in_epoch)
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
                    if epoch_lines is not None:
                        epoch_lines.add_losses(means, count)
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
                        f"saved: continue with `peerkd train --resume {self.run_dir}`", self.stop_signal)
            if epoch_lines is not None:
                epoch_lines.trained()
            self.method.eval()
            with torch.no_grad():
                self.method.on_epoch_end(EpochContext(self.epoch, epochs, self.device, self.heldout_loader,
                                                      self.autocast, self.ddp.world))
            self.method.train()
            last = self.epoch + 1 == epochs
            metrics = None
            if (self.epoch + 1) % cfg.trainer.eval_every == 0 or last:
                metrics = self.evaluate()
                self._record_eval(metrics)
                self.log({"kind": "eval", "epoch": self.epoch, "global_step": self.global_step,
                          "split": cfg.data.eval_split, "metrics": metrics.to_record()})
                if progress is not None:
                    progress.set_postfix_str(_short(metrics))
            if epoch_lines is not None:
                print(epoch_lines.finish(self.epoch, metrics, cfg.data.batch_size), flush=True)
            self.epoch += 1
            self.step_in_epoch = 0
            self.save()
        if progress is not None:
            progress.close()

    def _drain_logs(self) -> dict[str, float]:
        """The mean loss parts since the last call (one host sync); stops the run if any loss was not finite."""
        means, _, bad = self.step.drain_logs()
        if bad:
            where = f"the loss became non-finite in epoch {self.epoch + 1} (before step {self.step_in_epoch})"
            advice = "Lower optim.lr, add schedule.warmup_epochs, or use trainer.precision=fp32"
            if self.last_saved is None:
                raise NonFiniteLossError(f"{where}, before any checkpoint was written: there is nothing to resume. "
                                         f"{advice}, then start the run again")
            epoch, step = self.last_saved
            at = f"after epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
            raise NonFiniteLossError(f"{where}; the last good checkpoint ({self.run_dir / CHECKPOINT}, {at}) is "
                                     f"kept. {advice}, then resume with --resume")
        return means

    def summary(self) -> dict:
        last = dict(self.history["last"])  # the last evaluation's stored form and its epoch
        last_epoch = last.pop("epoch", None)
        result = EvalResult.from_record(last)
        out = {"name": self.config.name, "method": self.config.method.name, "epochs": self.epoch,
               "last_epoch": last_epoch, "eval_split": self.config.data.eval_split, "keys": {}}
        for key, metrics in result.keys.items():
            out["keys"][key] = {"last": metrics, "best": self.history["best"].get(key)}
        out.update(result.groups_record())  # summary.json's "diversity" block, where the method has groups
        out["params"] = parameter_summary(self.method, list(out["keys"]))  # trained / exported / per predict key
        return out


def _sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values)
    return values


class EpochLines:
    """One line per epoch for a log that is not a terminal (no progress bar): the epoch, its mean loss, top-1 of
    the first predict key when evaluated, training images per second and the time left at this epoch's pace."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    def start(self, steps_to_run: int) -> None:
        """Before an epoch's first step (a resumed epoch runs only its remaining ``steps_to_run``)."""
        self.tick, self.steps, self.loss_sum, self.loss_steps = time.perf_counter(), steps_to_run, 0.0, 0
        self.train_seconds = None

    def add_losses(self, means: dict[str, float], count: int) -> None:
        self.loss_sum += means.get("loss", 0.0) * count
        self.loss_steps += count if "loss" in means else 0

    def trained(self) -> None:
        """After the epoch's last step (before its evaluation)."""
        self.train_seconds = time.perf_counter() - self.tick

    def finish(self, epoch: int, metrics: EvalResult | None, batch_size: int) -> str:
        seconds = time.perf_counter() - self.tick  # training + evaluation of this epoch
        epoch_seconds = seconds * self.steps_per_epoch / max(self.steps, 1)
        left = (self.epochs - epoch - 1) * epoch_seconds
        loss = f"{self.loss_sum / self.loss_steps:.4f}" if self.loss_steps else "-"
        scored = list(metrics.keys.items()) if metrics is not None else []
        top1 = f"{scored[0][1]['top1']:.2f} % ({scored[0][0]})" if scored else "- (not evaluated)"
        rate = self.steps * batch_size / max(self.train_seconds or seconds, 1e-9)
        return (f"epoch {epoch + 1}/{self.epochs}  loss {loss}  top-1 {top1}  {rate:.0f} images/s  "
                f"time left {_clock(left)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _short(metrics: EvalResult) -> str:
    return " ".join(f"{k}={v['top1']:.1f}" for k, v in metrics.keys.items())


def _progress_bar(mode: str, is_main: bool, total: int, initial: int):
    if not is_main or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(config: Config, run_dir: str | Path | None = None, resume: bool = False,
          on_step: Callable[[Trainer], None] | None = None) -> dict:
    """Train (or, with ``resume``, continue) the run described by ``config``; return its summary."""
    return Trainer(config, run_dir=run_dir, resume=resume, on_step=on_step).fit()
