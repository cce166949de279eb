"""The files of a run folder, by name: the contract between training, which writes a run folder
(:mod:`peerkd.training`), and what reads it back (``peerkd eval`` / ``export`` / ``plot`` / ``sweep`` / ``report``,
:func:`peerkd.load_run`). Every module names these files through this one, never by a literal.

A run folder ``runs/<name>/`` holds, in the order a run writes them: :data:`LOCK_FILE` while a process writes it,
:data:`HISTORY_LOG`, :data:`CONFIG_FILE`, :data:`ENVIRONMENT_FILE`, :data:`METRICS_LOG` and TensorBoard's event files,
:data:`CHECKPOINT` (and :data:`PREVIOUS_CHECKPOINT`) every epoch, and :data:`SUMMARY_FILE` once it is finished;
``peerkd sweep`` adds :data:`SWEEP_LOG`, and the commands that read a run add their outputs (:data:`EVAL_FILE`,
:data:`EXPORT_DIR`, the plots).
"""
from __future__ import annotations

# -- written by training --------------------------------------------------------------------------------------
LOCK_FILE = ".peerkd.lock"  # the lock (flock) of the process writing the folder: its pid, host and start time
HISTORY_LOG = "history.jsonl"  # one JSON line per start or resume of the run: time, host, pid, what a resume changed
CONFIG_FILE = "config.yaml"  # the run's resolved config as it started (a resume keeps it; its changes: HISTORY_LOG)
ENVIRONMENT_FILE = "environment.json"  # the starting session's git SHA, library versions, device and argv
METRICS_LOG = "metrics.jsonl"  # one JSON record per line: "train" (losses, lr, speed), "eval" (EvalResult.to_record)
TENSORBOARD_PREFIX = "events.out.tfevents."  # the start of the names of TensorBoard's event files (the same scalars)
CHECKPOINT = "checkpoint.pt"  # the last checkpoint (checksummed): weights, optimizer, every RNG state, history, config
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the checkpoint before the last one, kept in case the last is damaged
TEMP_SUFFIX = ".tmp"  # an atomic write's unfinished file, ``.<name>.<random>.tmp``; removed when a run takes the folder
SUMMARY_FILE = "summary.json"  # the finished run: last and best metrics per predict key, "diversity" block, params
# any of these makes a folder a run folder to `peerkd report` (a run stopped early holds no summary)
RUN_MARKERS = (CONFIG_FILE, SUMMARY_FILE, CHECKPOINT, METRICS_LOG)

# -- written by the commands around training --------------------------------------------------------------------
SWEEP_LOG = "sweep.log"  # the run's stdout and stderr under `peerkd sweep` (appended across restarts)
EVAL_FILE = "eval.json"  # `peerkd eval`: the epoch evaluated and its metrics (EvalResult.to_record)
EXPORT_DIR = "export"  # `peerkd export`'s default folder: one file per exported key, with a JSON beside it
DIVERSITY_PLOT = "diversity.png"  # `peerkd plot diversity`'s default output, in the (first) run's folder


def reliability_plot(key: str) -> str:
    """`peerkd plot reliability`'s default output for predict key ``key``."""
    return f"reliability_{key}.png"
