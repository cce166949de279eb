"""Experiment trackers: where a run's records go besides its own ``metrics.jsonl`` and TensorBoard events.

``trainer.loggers`` names the sinks: ``jsonl`` and ``tensorboard`` (written by the trainer itself into the run
folder) and the trackers here, one small class each behind one interface (:class:`Tracker`): ``wandb`` (Weights &
Biases), ``mlflow`` and ``trackio``. Rank 0 alone creates them. Each gets, at its start, the resolved config, the
environment and the run folder's name; then every record the trainer logs (the ``train`` losses, learning rate and
images/s, every ``predict`` key's ``eval`` metrics and the diversity groups), as the same scalars TensorBoard gets
(:func:`scalars`), at the run's global step; at the end, the parameter counts of the summary.

A tracker's run id is kept in the checkpoint (``state["trackers"]``): ``--resume`` (and a SLURM requeue, which
resumes) continues the same tracked run. ``peerkd sweep`` sets :data:`SWEEP_GROUP_ENV` for its runs; a tracker puts
the run in that group (a wandb group, the MLflow tag ``peerkd.sweep_group``, a trackio group).

Where a tracker's data go is the tracker's own business and its own settings: ``WANDB_MODE`` / ``WANDB_DIR`` /
``wandb login``, ``MLFLOW_TRACKING_URI``, ``TRACKIO_DIR``; the project (wandb project, MLflow experiment, trackio
project) is ``trainer.tracker_project``.
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from peerkd.core.run_files import METRICS_LOG
from peerkd.core.errors import ConfigError
from peerkd.core.process import SWEEP_GROUP_ENV
STEP_KEYS = ("epoch", "step", "global_step")  # a record's position, not a value to plot


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a trainer record as ``{tag: value}``: ``<kind>/<key>`` for a number, ``<kind>/<key>/<sub>/
    <name>`` for a mapping of mappings (``eval/metrics/net1/top1``, ``eval/metrics/diversity/members``); the tags
    TensorBoard gets. ``epoch`` / ``step`` / ``global_step`` and non-numbers (an execution not measured) are left
    out."""
    prefix = record["kind"]
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and key not in STEP_KEYS:
            out[f"{prefix}/{key}"] = value
        elif isinstance(value, dict):
            for sub, metrics in value.items():
                for name, number in (metrics.items() if isinstance(metrics, dict) else [("", metrics)]):
                    if isinstance(number, (int, float)):
                        out[f"{prefix}/{key}/{sub}/{name}".rstrip("/")] = number
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """One experiment tracker. ``start`` creates (or, given ``resume_id``, continues) the tracked run and returns its
    id; ``log`` sends one trainer record at ``step`` (the run's global step); ``finish`` closes the run, ``ok``
    False when training ended by an error or a stop."""

    name = ""
    extra = ""  # the pip extra that installs it: pip install 'peerkd[<extra>]'
    module = ""  # the module it imports

    def __init__(self, project: str, run_name: str, group: str | None):
        self.project, self.run_name, self.group = project, run_name, group

    def start(self, config: dict, environment: dict, resume_id: str | None) -> str:
        raise NotImplementedError

    def log(self, record: dict, step: int) -> None:
        raise NotImplementedError

    def finish(self, ok: bool = True) -> None:
        raise NotImplementedError


class WandbTracker(Tracker):
    """Weights & Biases. The run's display name is the run folder's; its id is wandb's. Steps are the metric
    ``global_step`` (``define_metric``), so the steps a resumed run trains again are kept, not dropped."""

    name, extra, module = "wandb", "wandb", "wandb"

    def start(self, config, environment, resume_id):
        import wandb

        settings = wandb.Settings(console="off", silent=True)  # peerkd's own output stays as it is
        self.run = wandb.init(project=self.project, name=self.run_name, group=self.group, id=resume_id,
                              resume="allow" if resume_id else None, settings=settings,
                              config={**config, "environment": environment}, allow_val_change=True)
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")
        return self.run.id

    def log(self, record, step):
        self.run.log({**scalars(record), "global_step": step})

    def finish(self, ok=True):
        self.run.finish(exit_code=0 if ok else 1)


class MlflowTracker(Tracker):
    """MLflow, through ``MlflowClient`` (no global active run): the experiment is ``trainer.tracker_project``, the
    store ``MLFLOW_TRACKING_URI``. The config and environment are the run's parameters (dotted keys), written once
    (MLflow parameters cannot change; a resume's changes are in history.jsonl); a sweep's group is the tag
    ``peerkd.sweep_group``."""

    name, extra, module = "mlflow", "mlflow", "mlflow"
    BATCH = 100  # parameters / metrics per log_batch call (MLflow's limit for parameters)
    PARAM_CHARS = 6000  # MLflow's longest parameter value

    def start(self, config, environment, resume_id):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient()
        if resume_id:
            self.run_id = self.client.get_run(resume_id).info.run_id  # raises when the store lost it
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        experiment = self.client.get_experiment_by_name(self.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.project)
        tags = {"peerkd.run_folder": self.run_name}
        if self.group:
            tags["peerkd.sweep_group"] = self.group
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        params = flatten({**config, "environment": environment})
        items = [Param(key, str(value)[:self.PARAM_CHARS]) for key, value in params.items()]
        for first in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, params=items[first:first + self.BATCH])
        return self.run_id

    def log(self, record, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in scalars(record).items()]
        for first in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, metrics=items[first:first + self.BATCH])

    def finish(self, ok=True):
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")


class TrackioTracker(Tracker):
    """trackio (local SQLite under ``TRACKIO_DIR``, or a Space): a run is known by its name, so a new run is named
    ``<run folder>-<6 hex digits>`` (unique) and that name is its id."""

    name, extra, module = "trackio", "trackio", "trackio"

    def start(self, config, environment, resume_id):
        import trackio

        name = resume_id or f"{self.run_name}-{secrets.token_hex(3)}"
        with contextlib.redirect_stdout(io.StringIO()):  # its banner: how to open the dashboard (README says it)
            self.run = trackio.init(project=self.project, name=name, group=self.group,
                                    config={**config, "environment": environment},
                                    resume="allow" if resume_id else "never", embed=False,
                                    auto_log_gpu=False, auto_log_cpu=False)
        return self.run.name

    def log(self, record, step):
        self.run.log(scalars(record), step=step)

    def finish(self, ok=True):
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()


TRACKERS: dict[str, type[Tracker]] = {cls.name: cls for cls in (WandbTracker, MlflowTracker, TrackioTracker)}


def _advice(cls: type[Tracker], error: BaseException | None) -> str:
    install = f"pip install 'peerkd[{cls.extra}]'"
    if error is None:
        return f"{cls.name} is not installed: {install}"
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    setting = {"wandb": "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline",
               "mlflow": "set MLFLOW_TRACKING_URI to a reachable server or a store such as sqlite:///mlflow.db",
               "trackio": "check TRACKIO_DIR (a writable folder) or the Space it names"}[cls.name]
    return f"{cls.name} could not start ({type(error).__name__}: {reason}); {setting}"


class Trackers:
    """The trackers of one run (rank 0), started together; each failure is a ConfigError (one line: what to install
    or set) before any training, or, with ``trainer.loggers_required: false``, one warning and the run goes on
    without it. A tracker that fails while logging is dropped with one warning (metrics.jsonl keeps every record)."""

    def __init__(self, names: list[str], required: bool, project: str, run_name: str,
                 resume_ids: dict[str, str] | None = None):
        self.required = required
        self.ids: dict[str, str] = dict(resume_ids or {})  # kept in the checkpoint, also for trackers not used now
        self.active: list[Tracker] = []
        group = os.environ.get(SWEEP_GROUP_ENV) or None
        self._todo = [TRACKERS[n](project, run_name, group) for n in names if n in TRACKERS]

    def start(self, config: dict, environment: dict) -> None:
        for tracker in self._todo:
            try:
                __import__(tracker.module)
            except ImportError:
                self._failed(tracker, None)
                continue
            try:
                self.ids[tracker.name] = tracker.start(config, environment, self.ids.get(tracker.name))
            except Exception as err:  # noqa: BLE001 (a tracker's own errors are many; each becomes one line)
                self._failed(tracker, err)
                continue
            self.active.append(tracker)

    def _failed(self, tracker: Tracker, error: BaseException | None) -> None:
        message = f"trainer.loggers: {_advice(type(tracker), error)}"
        if self.required:
            self.finish(ok=False)
            raise ConfigError(message + "; or drop it from trainer.loggers (or set trainer.loggers_required=false "
                                         "to go on without it)")
        warnings.warn(message + "; going on without it (trainer.loggers_required is false)", stacklevel=3)

    def log(self, record: dict, step: int) -> None:
        for tracker in list(self.active):
            try:
                tracker.log(record, step)
            except Exception as err:  # noqa: BLE001
                self.active.remove(tracker)
                warnings.warn(f"trainer.loggers: {tracker.name} failed while logging ({type(err).__name__}: "
                              f"{str(err)[:200]}); the run goes on without it, {METRICS_LOG} has every record",
                              stacklevel=2)

    def finish(self, ok: bool = True) -> None:
        active, self.active = self.active, []
        for tracker in active:
            try:
                tracker.finish(ok)
            except Exception as err:  # noqa: BLE001
                warnings.warn(f"trainer.loggers: {tracker.name} did not close cleanly ({err})", stacklevel=2)


def run_name(run_dir: str | Path) -> str:
    """The name a tracked run shows: its run folder's."""
    return Path(run_dir).resolve().name
