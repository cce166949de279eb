"""What a peerkd process tells its caller: the exit codes of ``peerkd`` commands, and whether signal handlers can be
installed (only the main thread may)."""
from __future__ import annotations

import threading

EXIT_NONFINITE = 1  # training diverged; the last good checkpoint is kept
EXIT_BAD_INPUT = 2  # a wrong config, missing data, an unusable run folder: nothing was trained
EXIT_CTRL_C = 130  # 128 + SIGINT: Ctrl-C, handled like SIGTERM (checkpoint saved when training had started)
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped on request after saving a checkpoint to resume from


def is_main_thread() -> bool:
    """True in the main thread, the only one where ``signal.signal`` may install a handler."""
    return threading.current_thread() is threading.main_thread()

SWEEP_GROUP_ENV = "PEERKD_SWEEP_GROUP"  # set by `peerkd sweep` for its runs; their tracked runs (trainer.loggers:
# wandb, mlflow, trackio) join this group
