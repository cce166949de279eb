"""The run folder: atomic checkpoints, JSON files, and ``load_run`` to get a trained method back.

A run folder holds ``config.yaml`` (resolved), ``environment.json`` (git SHA, library versions, device),
``metrics.jsonl``, TensorBoard events, ``checkpoint.pt`` and, once finished, ``summary.json``.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "peerkd-checkpoint-1"


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used; the message says what to do."""


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it over ``path``: a crash
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    state = dict(state, format=CHECKPOINT_FORMAT)
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}; start the run without --resume, or point at a run folder that "
                       "holds checkpoint.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise RunError(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:120]}); it is truncated "
                       "or not a peerkd checkpoint: restore a good copy, or move it away to start the run over") \
            from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a peerkd checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def environment_info(device: torch.device) -> dict:
    import numpy
    import torchvision

    import peerkd

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if sha else None
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    info = {
        "git_sha": sha, "git_dirty": dirty, "peerkd": peerkd.__version__, "python": sys.version.split()[0],
        "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__,
        "device": str(device), "argv": sys.argv,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class LoadedRun:
    """A trained run brought back: its config, its method with the checkpoint's weights, and its summary."""

    path: Path
    config: Any
    method: Any
    summary: dict | None
    epoch: int
    input: dict | None = None  # image_size, mean, std of the run's normalisation (None: a run saved before it)

    def export(self, key: str | None = None) -> torch.nn.Module:
        return self.method.export(key)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the method of the run in ``run_dir`` from its checkpoint, in eval mode on ``device``."""
    from peerkd.config import ConfigError, build_config
    from peerkd.methods import TaskInfo, build_method

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    try:
        config = build_config(state["config"])
    except ConfigError as err:
        raise RunError(f"the config saved in {run_dir / CHECKPOINT} no longer validates: {err}") from None
    task = TaskInfo(**dict(state["task"], restoring=True))
    method = build_method(config.method.name, config.method.options, task)
    method.load_state_dict(state["method"])
    method.to(device).eval()
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return LoadedRun(run_dir, config, method, summary, state["epoch"], state.get("input"))
