"""Taking a run folder for the process that trains into it, before any data or model is set up.

:func:`claim_run_folder` creates the folder (a folder that cannot be written is reported here, not after minutes
of set-up), takes its lock (:mod:`peerkd.core.run_lock`), decides what the folder is, removes the temporary files
a killed write left, and on ``--resume`` loads the checkpoint and compares its config with the one asked for:

- empty or new: a fresh run;
- holds a checkpoint: a run; it continues only with ``--resume`` (or automatically when ``torchrun`` restarts the
  workers of this very run after a fault: ``TORCHELASTIC_RESTART_COUNT`` > 0);
- holds ``history.jsonl`` but no checkpoint: a peerkd run stopped before its first checkpoint; it starts over;
- anything else: not a peerkd run (a user's own files); refused, nothing written.

A resume may change only the keys of :data:`RESUME_CHANGEABLE`; any other difference is refused with the keys named
(config.yaml would lie about the weights). ``config.yaml`` stays the config the run started with; each start and
resume appends a line to ``history.jsonl`` with what it changed.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from peerkd.config import config_keys, flatten_tree
from peerkd.core.errors import RunError
from peerkd.core.run_files import (CHECKPOINT, CONFIG_FILE, ENVIRONMENT_FILE, HISTORY_LOG, LOCK_FILE, METRICS_LOG,
                                   SWEEP_LOG, TEMP_SUFFIX, TENSORBOARD_PREFIX)
from peerkd.training.checkpoint import atomic_write_bytes, has_checkpoint, load_checkpoint_from, saved_config
from peerkd.core.run_lock import RunLock

# Config keys a resume may change: the schema's fields tagged resumable (peerkd.config.RESUMABLE, PLACEMENT); they
# decide how far and how the run goes on, what is evaluated or logged, and where and how fast it runs (trainer.members,
# trainer.step: the same numbers, the same state_dict), not what the weights so far were trained with.
RESUME_CHANGEABLE = config_keys("resumable")
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclasses.dataclass
class Claim:
    """A run folder taken for writing: its lock, whether the run resumes, and the checkpoint it resumes from."""

    run_dir: Path
    lock: RunLock
    resume: bool
    created: Path | None  # the topmost folder this claim created (removed again if the run does not start)
    created_lock: bool  # the lock file is this claim's (removed again if the run does not start)
    state: dict | None = None  # the checkpoint's state (resume)
    source: Path | None = None  # the checkpoint file it came from (checkpoint.prev.pt after a damaged one)
    changed: dict = dataclasses.field(default_factory=dict)  # key -> [run's value, this resume's value]
    restart: int = 0  # torchrun's restart count

    def release(self, started: bool = True) -> None:
        """Give the lock back; if the run never started in a folder this claim created, remove the folder."""
        self.lock.release()
        if started:
            return
        if self.created_lock:
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
        if self.created is None:
            return
        folder = self.run_dir
        while True:
            try:
                folder.rmdir()
            except OSError:
                return
            if folder == self.created:
                return
            folder = folder.parent


def elastic_restart_count() -> int:
    """How often torchrun has restarted this job's workers (0 outside torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def claim_run_folder(run_dir: Path, config, resume: bool) -> Claim:
    """Take ``run_dir`` for a run of ``config`` (see the module docstring); RunError says why it cannot be."""
    run_dir = Path(run_dir)
    created = _topmost_missing(run_dir)
    lock = RunLock(run_dir)
    created_lock = not lock.path.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        raise RunError(_unwritable(run_dir, err)) from None
    claim = Claim(run_dir, lock, resume, created, created_lock, restart=elastic_restart_count())
    try:
        _remove_stale_temporaries(run_dir)
        _settle_kind(claim)
        if claim.resume:
            claim.state, claim.source = load_checkpoint_from(run_dir / CHECKPOINT)
            claim.changed = resume_changes(claim.state, config, run_dir)
    except BaseException:
        claim.release(started=False)
        raise
    return claim


def _topmost_missing(path: Path) -> Path | None:
    path = path.absolute()
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _unwritable(run_dir: Path, err: OSError) -> str:
    if err.errno in OUT_OF_SPACE:
        return f"no space left on the device of {run_dir}: nothing was written; free some space and start again"
    return (f"cannot write the run folder {run_dir} ({err.strerror}: {err.filename}); choose a writable folder with "
            "--out (nothing was trained)")


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Remove the ``.<name>.*.tmp`` files an atomic write leaves when its process is killed mid-write."""
    for path in run_dir.glob(f".*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)


def _settle_kind(claim: Claim) -> None:
    run_dir = claim.run_dir
    if has_checkpoint(run_dir):
        if not claim.resume and claim.restart > 0:
            claim.resume = True  # torchrun restarted the workers of this run after a fault: continue it
            print(f"peerkd: torchrun restart {claim.restart}: resuming {run_dir} from its last checkpoint",
                  file=sys.stderr, flush=True)
        elif not claim.resume:
            raise RunError(f"{run_dir} already holds a run; continue it with --resume, or choose another name "
                           "(--set name=...) or --out folder")
        return
    if claim.resume:
        raise RunError(f"--resume: {run_dir} holds no {CHECKPOINT}; start the run without --resume")
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK_FILE, SWEEP_LOG))
    if not others:
        return
    if HISTORY_LOG not in others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise RunError(f"{run_dir} is not empty ({shown}) and is not a peerkd run; nothing was written: choose a new "
                       "or empty folder with --out")
    print(f"peerkd: {run_dir} holds a run stopped before its first checkpoint; starting it over", file=sys.stderr,
          flush=True)
    for name in others:
        path = run_dir / name
        if name in (METRICS_LOG, CONFIG_FILE, ENVIRONMENT_FILE) or name.startswith(TENSORBOARD_PREFIX):
            path.unlink() if path.is_file() else shutil.rmtree(path)


# -------------------------------------------------------------------------------------------- resume and config


def resume_changes(state: dict, config, run_dir: Path) -> dict:
    """The keys in which ``config`` differs from the config of the checkpoint ``state`` (key -> [old, new]);
    RunError naming them when one is not in RESUME_CHANGEABLE or a change would rewrite what was trained."""
    saved = saved_config(state, run_dir)
    old, new = flatten_tree(saved.to_dict()), flatten_tree(config.to_dict())
    changed = {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}
    refused = [k for k in changed if k not in RESUME_CHANGEABLE]
    if refused:
        shown = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
        raise RunError(f"--resume: {run_dir}'s checkpoint was trained with another config: {shown}. Resume with the "
                       "run's own config (drop -c/--set for these keys) or start a new run; a resume may change only "
                       + ", ".join(RESUME_CHANGEABLE))
    done, mid_epoch = state["epoch"], state["step_in_epoch"] > 0
    if config.schedule.epochs < done + mid_epoch:
        raise RunError(f"--resume: schedule.epochs={config.schedule.epochs}, but {run_dir} has trained "
                       f"{done} epochs{' and part of the next' if mid_epoch else ''}; ask for at least "
                       f"{done + mid_epoch}")
    if config.schedule.kind == "multistep":  # epoch e trains at lr x gamma^(milestones <= e)
        last_trained = done - 1 + mid_epoch
        passed = lambda milestones: sorted(m for m in milestones if m <= last_trained)  # noqa: E731
        if passed(saved.schedule.milestones) != passed(config.schedule.milestones):
            raise RunError(f"--resume: schedule.milestones {config.schedule.milestones} change milestones the run has "
                           f"passed (epoch {done}; the run's milestones: {saved.schedule.milestones}); only later "
                           "milestones may change")
    return changed


# ------------------------------------------------------------------------------------------ logs of a resumed run

def truncate_metrics(run_dir: Path, global_step: int) -> int:
    """Drop the records of ``metrics.jsonl`` logged after step ``global_step`` (the checkpoint's: they are trained
    again) and a torn last line; return how many were dropped."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("global_step", 0) > global_step:
            dropped += 1
            continue
        kept.append(line + "\n")
    if dropped:
        atomic_write_bytes(path, lambda f: f.write("".join(kept).encode()))
    return dropped


def append_history(run_dir: Path, record: dict) -> None:
    """One line of ``history.jsonl``: a start or a resume of the run, with its time, host and pid."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
              **record}
    with open(Path(run_dir) / HISTORY_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
