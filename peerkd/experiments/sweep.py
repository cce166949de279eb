"""``peerkd sweep``: every config under several seeds, each an ordinary ``peerkd train`` run in its own folder.

A sweep only launches runs and reads their folders (``/work/shared/DESIGN.md``, "Around the trainer"): the trainer
and the methods know nothing of it. Each config x seed gets the folder ``<out>/<config name>-s<seed>``, a name that
depends only on the config and the seed, so a sweep started again finds its runs: a run with a ``summary.json`` of
all its epochs is skipped, a run with a ``checkpoint.pt`` and no summary (stopped, pre-empted, crashed) is continued
with ``peerkd train --resume`` under the same config file and the same ``--set`` overrides it started with, and the
others start. The seed is the config's ``seed`` (``--set seed=S``): it seeds the weights, the data order and every
augmentation (``peerkd.training.setup.seed_everything`` and the loaders' generators); the generated dataset keeps its
own ``data.synthetic.seed``, so every seed sees the same images.

Executors:

- ``local`` (default): up to ``--jobs`` runs at once on this machine, one subprocess each, all sharing the device,
  or one GPU each with ``--gpus 0,1,...`` (``CUDA_VISIBLE_DEVICES``; repeat an id to put two runs on one GPU). A line
  per run as it starts, ends or fails and the sweep's overall count after each; a failed run is reported with the
  end of its log and the others go on. SIGTERM or Ctrl-C stops the sweep: each running run gets SIGTERM, saves a
  checkpoint and exits 143 (the trainer's path), and the same command continues them later.
  Faults of the sweep itself: a run whose folder another live process holds (the runs of an earlier sweep that was
  killed, a second sweep into the same ``--out``) is waited for and counted when it ends, never started a second
  time (:func:`peerkd.core.run_lock.lock_holder`); a run that fails is started again up to ``--retries`` times
  (a run that fails every time is reported with the last lines of its log, and the sweep goes on and exits 1 with
  the list); a run that cannot even start (its folder cannot be written: disk full, permissions) is a failure of
  that run alone.
- ``slurm`` (``peerkd[cluster]``, submitit): one job per run, or one job array; see :mod:`peerkd.experiments.slurm`.

``--nproc-per-run P`` runs each run under ``torchrun --standalone --nproc_per_node P`` (DDP; gloo on CPU, nccl on
CUDA), as ``peerkd train`` already supports.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from peerkd.experiments.plan import RunSpec, child_env, parse_seeds, plan, run_state  # noqa: F401 (re-exported)
from peerkd.core.errors import ConfigError
from peerkd.core.process import EXIT_INTERRUPTED, is_main_thread
from peerkd.core.run_files import SUMMARY_FILE, SWEEP_LOG
from peerkd.core.run_lock import describe_holder, lock_holder

POLL_S = 0.2  # seconds between looks at the running processes
STOP_WAIT_S = 120.0  # seconds a stopped run gets to save its checkpoint before it is killed
ELSEWHERE_POLL_S = 1.0  # seconds between looks at the lock of a run another process holds
RETRIES = 1  # a failed run is started again once (a crash, a node's hiccup); one failing every time costs one rerun
FAILED_LOG_LINES = 3  # lines of a failed run's log shown in the sweep's output


def last_lines(path: Path, count: int = 1) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-count:])


def summary_line(run_dir: Path) -> str:
    """``net1 last top1 71.20, ...`` from a finished run's summary (the first three keys)."""
    try:
        keys = json.loads((run_dir / SUMMARY_FILE).read_text())["keys"]
    except (OSError, ValueError, KeyError):
        return ""
    return ", ".join(f"{k} {v['last']['top1']:.2f}" for k, v in list(keys.items())[:3]) + " (last top-1 %)"


# ------------------------------------------------------------------------------------------------- local executor

@dataclasses.dataclass
class _Running:
    spec: RunSpec
    index: int
    process: subprocess.Popen
    log: object
    gpus: list[str]
    started: float
    signalled_at: float | None = None  # when the sweep sent it SIGTERM


@dataclasses.dataclass
class SweepResult:
    done: list[str] = dataclasses.field(default_factory=list)  # finished now or before
    failed: list[str] = dataclasses.field(default_factory=list)
    interrupted: list[str] = dataclasses.field(default_factory=list)
    stopped: bool = False  # the sweep itself was asked to stop

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return EXIT_INTERRUPTED
        return 1 if self.failed else 0


def run_local(specs: Sequence[RunSpec], jobs: int = 1, gpus: Sequence[str] = (), nproc: int = 1,
              say: Callable[[str], None] | None = None, retries: int = RETRIES) -> SweepResult:
    """Run ``specs`` on this machine, at most ``jobs`` at once (each holding ``nproc`` of ``gpus`` when given); a run
    another process holds is waited for, a failed one started again up to ``retries`` times."""
    say = say or (lambda line: print(line, flush=True))
    total, result = len(specs), SweepResult()
    free_gpus = list(gpus)
    if gpus and len(gpus) < nproc:
        raise ConfigError(f"--gpus: a run needs {nproc} GPU(s) (--nproc-per-run) but only {len(gpus)} are given")
    waiting: list[tuple[int, RunSpec]] = []
    for index, spec in enumerate(specs, 1):
        if run_state(spec) == "done":
            say(f"[run {index}/{total}] {spec.name}: finished before, skipped")
            result.done.append(spec.name)
        else:
            waiting.append((index, spec))
    running: list[_Running] = []
    elsewhere: list[tuple[int, RunSpec]] = []  # held by another live process: waited for, not started
    failures: dict[str, int] = {}
    stop = {"asked": False}
    looked = 0.0  # when the locks of the runs held elsewhere were last probed

    def on_signal(signum, frame):
        stop["asked"] = True

    handlers = {}
    if is_main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def overall() -> None:
        held = f", {len(elsewhere)} in other processes" if elsewhere else ""
        say(f"[sweep] {len(result.done)}/{total} done, {len(running)} running{held}, {len(result.failed)} failed, "
            f"{len(waiting)} waiting")

    def failed(index: int, spec: RunSpec, why: str) -> None:
        """``why``: ``<exit N or cannot start>) <details>``, printed as ``FAILED (<why>``."""
        failures[spec.name] = failures.get(spec.name, 0) + 1
        if failures[spec.name] <= retries:
            say(f"[run {index}/{total}] {spec.name}: failed ({why}; starting it again "
                f"({failures[spec.name]} of {retries} retries)")
            waiting.append((index, spec))
        else:
            result.failed.append(spec.name)
            say(f"[run {index}/{total}] {spec.name}: FAILED ({why}")

    try:
        while ((waiting or elsewhere) and not stop["asked"]) or running:
            while waiting and len(running) < jobs and not stop["asked"] and (not gpus or len(free_gpus) >= nproc):
                index, spec = waiting.pop(0)
                holder = lock_holder(spec.run_dir)
                if holder is not None:
                    elsewhere.append((index, spec))
                    say(f"[run {index}/{total}] {spec.name}: running in another process ({describe_holder(holder)}); "
                        "waiting for it, not starting a second copy")
                    continue
                if run_state(spec) == "done":  # finished meanwhile by another process (a second sweep)
                    result.done.append(spec.name)
                    say(f"[run {index}/{total}] {spec.name}: finished in another process, skipped")
                    continue
                held = [free_gpus.pop(0) for _ in range(nproc)] if gpus else []
                try:
                    running.append(_start(spec, index, total, held, nproc, say))
                except OSError as err:  # its folder or log cannot be written (disk full, permissions)
                    free_gpus.extend(held)
                    failed(index, spec, f"cannot start) {spec.run_dir}: {err.strerror or err}")
            time.sleep(POLL_S)
            if elsewhere and time.perf_counter() - looked >= ELSEWHERE_POLL_S:
                looked = time.perf_counter()
                for index, spec in [e for e in elsewhere if lock_holder(e[1].run_dir) is None]:
                    elsewhere.remove((index, spec))
                    if run_state(spec) == "done":
                        result.done.append(spec.name)
                        say(f"[run {index}/{total}] {spec.name}: finished in the other process: "
                            f"{summary_line(Path(spec.run_dir))}")
                        overall()
                    else:  # stopped or failed there: continued (or started) here
                        waiting.insert(0, (index, spec))
            if stop["asked"]:
                for run in running:
                    if run.process.poll() is None and run.signalled_at is None:
                        run.process.send_signal(signal.SIGTERM)
                        run.signalled_at = time.perf_counter()
            for run in [r for r in running if r.process.poll() is not None]:
                running.remove(run)
                free_gpus.extend(run.gpus)
                why = _finish(run, total, result, say)
                if why:
                    failed(run.index, run.spec, why)
                overall()
            if stop["asked"] and running:
                _kill_late(running)
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    if stop["asked"]:
        result.stopped = True
        others = f", {len(elsewhere)} left running in other processes" if elsewhere else ""
        say(f"[sweep] stopped: {len(result.interrupted)} run(s) saved a checkpoint, {len(waiting)} not started"
            f"{others}; run the same command again to continue")
    else:
        say(f"[sweep] finished: {len(result.done)}/{total} done, {len(result.failed)} failed"
            + (f" ({', '.join(result.failed)})" if result.failed else ""))
    return result


def _start(spec: RunSpec, index: int, total: int, gpus: list[str], nproc: int, say) -> _Running:
    run_dir = Path(spec.run_dir)
    state = run_state(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / SWEEP_LOG, "a")
    argv = spec.train_argv(nproc)
    log.write(f"\n# peerkd sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    log.flush()
    extra = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}
    extra.update(spec.env())
    # own session: a Ctrl-C at the terminal reaches the sweep alone, which then stops each run with SIGTERM
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(extra),
                               start_new_session=True)
    how = "continuing from its checkpoint" if state == "partial" else "started"
    where = f", GPU {','.join(gpus)}" if gpus else ""
    say(f"[run {index}/{total}] {spec.name}: {how} (pid {process.pid}{where}), log {run_dir / SWEEP_LOG}")
    return _Running(spec, index, process, log, gpus, time.perf_counter())


def _finish(run: _Running, total: int, result: SweepResult, say) -> str:
    """Record how ``run`` ended; returns why it failed, as ``exit N) <details>`` ("" when it finished or stopped)."""
    run.log.close()
    code, seconds = run.process.returncode, time.perf_counter() - run.started
    head = f"[run {run.index}/{total}] {run.spec.name}:"
    if code == 0:
        result.done.append(run.spec.name)
        say(f"{head} finished in {seconds:.0f} s: {summary_line(Path(run.spec.run_dir))}")
        return ""
    if code == EXIT_INTERRUPTED or (run.signalled_at is not None and run_state(run.spec) == "partial"):
        result.interrupted.append(run.spec.name)
        say(f"{head} stopped after {seconds:.0f} s with a checkpoint to continue from")
        return ""
    log = Path(run.spec.run_dir) / SWEEP_LOG
    return f"exit {code}) after {seconds:.0f} s: {last_lines(log, FAILED_LOG_LINES)[-400:]}; log {log}"


def _kill_late(running: list[_Running]) -> None:
    """Runs that ignore SIGTERM for ``STOP_WAIT_S`` are killed (their last epoch's checkpoint stays)."""
    now = time.perf_counter()
    for run in running:
        if run.signalled_at is not None and now - run.signalled_at > STOP_WAIT_S and run.process.poll() is None:
            run.process.kill()


# ---------------------------------------------------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG_OR_DIR", help="YAML configs, or folders of them")
    parser.add_argument("--seeds", default="0", help="seeds to run each config under: 0,1,2 or 0-4 (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every config (repeatable), as peerkd train --set")
    parser.add_argument("--out", default="runs", help="parent folder of the run folders (default runs)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="runs at once (local; default 1, or one per GPU group with --gpus)")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                        help="local processes (default), SLURM jobs through submitit, or submitit's local "
                             "executor (the SLURM path on one machine, for testing)")
    parser.add_argument("--gpus", help="local: GPU ids to pin runs to, one run per id (repeat an id for two runs "
                                       "on it), e.g. 0,1,2,3; default: every run sees every device")
    parser.add_argument("--nproc-per-run", type=int, default=1, help="processes (GPUs) per run under torchrun DDP")
    parser.add_argument("--retries", type=int, default=RETRIES,
                        help=f"local: times a failed run is started again (default {RETRIES})")
    parser.add_argument("--group", help="the group the runs' tracked runs join (trainer.loggers wandb / mlflow / "
                                        "trackio); default: the name of the --out folder")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, start nothing")
    from peerkd.experiments.slurm import add_job_arguments

    slurm = add_job_arguments(parser, "run")
    slurm.add_argument("--array", action="store_true", help="submit one job array instead of one job per run")
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs and report each as it ends")


def main(args) -> int:
    if args.jobs < 0 or args.nproc_per_run < 1 or args.retries < 0:
        raise ConfigError("--jobs and --retries must be >= 0 and --nproc-per-run >= 1")
    seeds = parse_seeds(args.seeds)
    group = args.group or Path(args.out).resolve().name
    specs = plan(args.configs, seeds, args.overrides, args.out, group)
    if args.dry_run:
        for spec in specs:
            print(f"{spec.name:<40} {run_state(spec):<8} {' '.join(spec.train_argv(args.nproc_per_run)[1:])}")
        return 0
    print(f"[sweep] {len(specs)} run(s): {len(specs) // len(seeds)} config(s) x seeds {','.join(map(str, seeds))} "
          f"into {args.out}", flush=True)
    if args.executor == "local":
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else []
        jobs = args.jobs or (max(len(gpus) // args.nproc_per_run, 1) if gpus else 1)
        return run_local(specs, jobs=jobs, gpus=gpus, nproc=args.nproc_per_run, retries=args.retries).exit_code
    from peerkd.experiments.slurm import SlurmOptions, submit

    options = SlurmOptions(partition=args.partition, time_min=args.time, gpus=args.gpus_per_run,
                           cpus=args.cpus_per_run, mem_gb=args.mem_gb, array=args.array,
                           parallel=args.jobs or len(specs), nproc=args.nproc_per_run,
                           max_requeues=args.max_requeues)
    cluster = "local" if args.executor == "submitit-local" else "slurm"
    jobs = submit(specs, options, folder=Path(args.out) / ".submitit", cluster=cluster)
    for spec, job in jobs:
        print(f"[sweep] {spec.name}: job {job.job_id} ({run_state(spec)})", flush=True)
    if not args.wait:
        print(f"[sweep] submitted {len(jobs)} job(s); logs in {Path(args.out) / '.submitit'}; the same command "
              "later skips finished runs and continues the rest", flush=True)
        return 0
    from peerkd.experiments.slurm import wait

    return wait(jobs)
