"""``peerkd sweep --executor slurm``: each run of a sweep as a SLURM job through submitit (``pip install
peerkd[cluster]``), requeued on pre-emption or at its time limit and continued exactly from its checkpoint.

The job's callable, :class:`RunJob`, follows the shape of DINO's and MAE's ``run_with_submitit.py``
(facebookresearch/dino, ``run_with_submitit.py``: a ``Trainer`` object whose ``__call__`` trains and whose
``checkpoint()`` returns a ``submitit.helpers.DelayedSubmission`` of a fresh copy of itself). It does not train in
its own process: it runs the run's ``peerkd train`` command (``--resume`` when the run folder holds a checkpoint,
decided again at every start), so a job is an ordinary run. When SLURM signals the job (submitit's ``USR2``, sent
``signal_delay_s`` before the time limit, or on pre-emption where the cluster sets ``preempt_send_user_signal``),
submitit calls ``checkpoint()``: it sends the training process SIGTERM, whose handler saves a checkpoint of the
exact step and exits 143 (the trainer's path), and returns the resubmission; the requeued job finds the checkpoint
and continues, bit for bit as an uninterrupted run on CPU (tests/experiments/test_sweep.py checks it with
submitit's local executor, which requeues the same way).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from peerkd.core.errors import ConfigError
from peerkd.core.process import EXIT_INTERRUPTED
from peerkd.core.run_files import CHECKPOINT, SUMMARY_FILE
from peerkd.experiments.plan import RunSpec, child_env, run_state

SIGNAL_DELAY_S = 120  # seconds before the time limit that SLURM signals a job: time to save a checkpoint
REQUEUE_WAIT_S = 180  # seconds a job whose run was stopped by a plain SIGTERM waits for submitit's requeue signal
STOP_TIMEOUT_S = 90  # seconds the training process gets to save its checkpoint after SIGTERM


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'peerkd[cluster]' (or pip install submitit)"
                          ) from None
    return submitit


class RunInterrupted(RuntimeError):
    """The run was stopped with a checkpoint and no requeue followed; the sweep's command continues it."""


class RunJob:
    """A checkpoint-aware submitit callable that trains one run of a sweep to its end."""

    def __init__(self, spec: RunSpec, nproc: int = 1):
        self.spec = spec
        self.nproc = nproc
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "nproc": self.nproc, "_process": None}  # a process does not travel

    def __call__(self) -> dict:
        run_dir = Path(self.spec.run_dir)
        if run_state(self.spec) != "done":
            run_dir.mkdir(parents=True, exist_ok=True)
            argv = self.spec.train_argv(self.nproc)
            print(f"peerkd job: {' '.join(argv)}", flush=True)
            self._process = subprocess.Popen(argv, env=child_env(self.spec.env()))
            while self._process.poll() is None:  # a poll loop: submitit's signal handler may run meanwhile
                time.sleep(0.5)
            code = self._process.returncode
            if code == EXIT_INTERRUPTED:
                time.sleep(REQUEUE_WAIT_S)  # a SIGTERM reached the run directly: give the requeue signal its time
                raise RunInterrupted(f"{self.spec.name} stopped with a checkpoint; run the sweep again to continue")
            if code != 0:
                raise RuntimeError(f"{self.spec.name}: peerkd train exited {code}; see this job's log")
        return json.loads((run_dir / SUMMARY_FILE).read_text())

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on the requeue signal: stop the run with a checkpoint, then resubmit a fresh job."""
        submitit = _submitit()
        stop_for_requeue(self._process)
        print(f"peerkd job: {self.spec.name} requeued; it continues from {Path(self.spec.run_dir) / CHECKPOINT}",
              flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.spec, self.nproc))


def stop_for_requeue(process: subprocess.Popen | None) -> None:
    """Inside submitit's requeue handler: SIGTERM to the job's process (a run saves its checkpoint), reaped within
    STOP_TIMEOUT_S, else killed."""
    if process is not None and process.returncode is None:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        _wait_for(process, STOP_TIMEOUT_S)


def add_job_arguments(parser, per: str):
    """The SLURM options of one job (``--gpus-per-<per>``, ``--cpus-per-<per>``: ``run`` for peerkd sweep, ``job``
    for peerkd tune's workers)."""
    slurm = parser.add_argument_group("slurm (peerkd[cluster])")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--time", type=int, default=24 * 60, help="minutes per job (default 1440)")
    slurm.add_argument(f"--gpus-per-{per}", type=int, default=1, help="GPUs per job (default 1; 0 for CPU jobs)")
    slurm.add_argument(f"--cpus-per-{per}", type=int, default=8, help="CPU cores per job (default 8)")
    slurm.add_argument("--mem-gb", type=int, default=32, help="memory per job, GB (default 32)")
    slurm.add_argument("--max-requeues", type=int, default=10, help="time-limit requeues per job (default 10)")
    return slurm


def _wait_for(process: subprocess.Popen, timeout_s: float) -> None:
    """Reap ``process`` (inside a signal handler that may have interrupted ``Popen.poll``: hence ``os.waitpid``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(process.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by the interrupted poll
            return
        if pid:
            return
        time.sleep(0.1)
    process.kill()


@dataclasses.dataclass
class SlurmOptions:
    partition: str | None = None  # SLURM partition (None: the cluster's default)
    time_min: int = 24 * 60  # minutes per job
    gpus: int = 1  # GPUs per job (the DDP processes of a run share them)
    cpus: int = 8  # CPU cores per job
    mem_gb: int = 32  # memory per job, GB
    array: bool = False  # one job array instead of one job per run
    parallel: int = 0  # at most this many array tasks at once (0: all)
    nproc: int = 1  # processes per run (torchrun DDP inside the job)
    max_requeues: int = 10  # time-limit requeues per job (pre-emptions do not count)


def submit(specs: Sequence[RunSpec], options: SlurmOptions, folder: str | Path, cluster: str = "slurm"):
    """Submit every unfinished run of ``specs``; return ``[(spec, job)]``. ``cluster="local"`` uses submitit's local
    executor (one machine, no SLURM): the same callable, the same requeue path."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=options.max_requeues)
    params = dict(timeout_min=options.time_min, name="peerkd", cpus_per_task=options.cpus, tasks_per_node=1,
                  nodes=1, mem_gb=options.mem_gb, gpus_per_node=options.gpus, slurm_signal_delay_s=SIGNAL_DELAY_S)
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.parallel:
        params["slurm_array_parallelism"] = options.parallel
    executor.update_parameters(**params)
    todo = [spec for spec in specs if run_state(spec) != "done"]
    calls = [RunJob(spec, options.nproc) for spec in todo]
    if options.array and cluster == "slurm":
        with executor.batch():
            jobs = [executor.submit(call) for call in calls]
    else:
        jobs = [executor.submit(call) for call in calls]
    return list(zip(todo, jobs))


def wait(jobs) -> int:
    """Wait for ``jobs``; print a line as each ends; 0 when all finished, 1 when one failed."""
    failed = 0
    for spec, job in jobs:
        try:
            job.result()
            print(f"[sweep] {spec.name}: finished (job {job.job_id})", flush=True)
        except Exception as err:  # submitit re-raises the job's error (with its traceback) here
            failed += 1
            print(f"[sweep] {spec.name}: FAILED (job {job.job_id}): {str(err).strip().splitlines()[-1][:300]}",
                  flush=True)
    return 1 if failed else 0
