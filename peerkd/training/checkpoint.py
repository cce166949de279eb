"""Checkpoints and JSON files of a run folder, written atomically, and ``load_run`` to get a trained method back.

A checkpoint (``checkpoint.pt``; ``checkpoint.prev.pt`` the one before it) is checksummed; a damaged one falls back
to the one before. The files of a run folder are named in :mod:`peerkd.core.run_files`.
"""
from __future__ import annotations

import hashlib
import io
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

from peerkd.core.errors import RunError
from peerkd.core.run_files import CHECKPOINT, PREVIOUS_CHECKPOINT, SUMMARY_FILE, TEMP_SUFFIX

CHECKPOINT_FORMAT = "peerkd-checkpoint-2"
LEGACY_CHECKPOINT_FORMAT = "peerkd-checkpoint-1"  # a bare torch.save zip (before checksums); still loaded
# A checkpoint file: this line, one JSON header line {"sha256": hex digest of the payload, "bytes": its length}, then
# the payload, torch.save's bytes of the state. The digest catches bytes damaged in place, which torch.load does not.
CHECKPOINT_MAGIC = b"PEERKD-CHECKPOINT-2\n"


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write, before_replace=None) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it over ``path``: a crash
    leaves either the old file or the new one, never half of one. The file gets the mode ``open`` would give it
    (0666 less the umask; mkstemp alone makes it 0600). ``before_replace()`` runs once the new file is complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}).encode()
    return CHECKPOINT_MAGIC + header + b"\n" + payload


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically with a checksum of its bytes. The checkpoint it replaces, if intact,
    becomes ``checkpoint.prev.pt`` (so one damaged file never costs the run); a damaged one is not kept."""
    path = Path(path)
    data = _checkpoint_bytes(dict(state, format=CHECKPOINT_FORMAT))
    previous = path.with_name(PREVIOUS_CHECKPOINT)

    def keep_previous():  # a hard link, so that checkpoint.pt never goes missing between the two renames
        if not path.is_file() or checkpoint_problem(path) is not None:
            return
        link = path.with_name(f".{PREVIOUS_CHECKPOINT}.link{TEMP_SUFFIX}")
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)
        except OSError:  # a file system without hard links
            os.replace(path, previous)

    atomic_write_bytes(path, lambda f: f.write(data), before_replace=keep_previous)


def _legacy_safe_globals() -> list:
    """What a peerkd-checkpoint-1 file holds besides tensors and plain containers: numpy's RNG state array."""
    import numpy

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, numpy.ndarray, numpy.dtype, type(numpy.dtype(numpy.uint32))]


def _split_checkpoint(data: bytes) -> tuple[bytes | None, str | None]:
    """(payload, None) for an intact checkpoint of the current format, (None, why) for a damaged one, and
    (data, None) unchanged for a legacy file (a bare zip: no checksum to verify)."""
    if not data.startswith(CHECKPOINT_MAGIC):
        if data.startswith(CHECKPOINT_MAGIC[:10]):
            return None, "unreadable: its header is damaged"
        return data, None
    end = data.find(b"\n", len(CHECKPOINT_MAGIC))
    try:
        header = json.loads(data[len(CHECKPOINT_MAGIC):end])
        digest, size = str(header["sha256"]), int(header["bytes"])
    except (ValueError, KeyError, TypeError):
        return None, "unreadable: its header is damaged"
    payload = data[end + 1:]
    if len(payload) != size:
        return None, f"unreadable: it is truncated ({len(payload)} of {size} bytes)"
    if hashlib.sha256(payload).hexdigest() != digest:
        return None, "damaged: its checksum does not match (the file was damaged in place)"
    return payload, None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted (damaged, truncated), or None when its checksum holds."""
    try:
        return _split_checkpoint(Path(path).read_bytes())[1]
    except OSError as err:
        return f"unreadable ({err.strerror})"


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """The state in the checkpoint file ``path``, checksum verified, unpickled with ``weights_only=True``: tensors and
    plain containers only, so a file from elsewhere cannot run code. Raises RunError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunError(f"checkpoint {path} cannot be read ({err.strerror})") from None
    payload, problem = _split_checkpoint(data)
    if problem is not None:
        raise RunError(f"checkpoint {path} is {problem}")
    legacy = not data.startswith(CHECKPOINT_MAGIC)  # a bare torch.save zip: the format before checksums
    if not zipfile.is_zipfile(io.BytesIO(payload)):  # torch.save writes a zip: anything else is no checkpoint at all
        raise RunError(f"checkpoint {path} is unreadable: it is not a torch.save file (truncated, or not a peerkd "
                       "checkpoint); restore a good copy, or move it away to start the run over")
    allowed = _legacy_safe_globals() if legacy else []
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            raise RunError(f"checkpoint {path} holds more than tensors and plain containers (refused, it could run "
                           "code when loaded); only load checkpoints written by peerkd") from None
        raise RunError(f"checkpoint {path} is unreadable (UnpicklingError: {str(err)[:120]}); it is truncated or "
                       "not a peerkd checkpoint: restore a good copy, or move it away to start the run over") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise RunError(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:120]}); it is truncated "
                       "or not a peerkd checkpoint: restore a good copy, or move it away to start the run over") \
            from None
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        raise RunError(f"{path} is not a peerkd checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if isinstance(state.get("config"), dict):  # a run saved before keys moved resumes, evaluates and exports as is
        from peerkd.config import upgrade_saved_config

        state["config"] = upgrade_saved_config(state["config"])
    return state


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).is_file() or (Path(run_dir) / PREVIOUS_CHECKPOINT).is_file()


def load_checkpoint(path: Path, map_location="cpu", warn=True) -> dict:
    """The state of the checkpoint ``path`` (``<run>/checkpoint.pt``); when it is missing, damaged or unreadable,
    that of ``checkpoint.prev.pt`` beside it, saying so in one line on stderr (``warn``). RunError if neither is
    good."""
    return load_checkpoint_from(path, map_location, warn)[0]


def load_checkpoint_from(path: Path, map_location="cpu", warn=True) -> tuple[dict, Path]:
    """:func:`load_checkpoint`, and the file the state came from."""
    path = Path(path)
    previous = path.with_name(PREVIOUS_CHECKPOINT)
    if not path.is_file() and not previous.is_file():
        raise RunError(f"no checkpoint at {path}; start the run without --resume, or point at a run folder that "
                       f"holds {CHECKPOINT}")
    try:
        return read_checkpoint(path, map_location), path
    except RunError as err:
        first = str(err)
    if path.name != CHECKPOINT or not previous.is_file():
        advice = "" if "restore" in first else "; restore a good copy, or move it away to start the run over"
        raise RunError(first + advice)
    try:
        state = read_checkpoint(previous, map_location)
    except RunError as err:
        raise RunError(f"{first}; and {err}: no good checkpoint is left, restore a copy or start the run over") \
            from None
    if warn:
        print(f"peerkd: {first}; using {previous.name} (epoch {state['epoch']}, step {state['global_step']})",
              file=sys.stderr, flush=True)
    return state, previous


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def processor_name() -> str:
    """The CPU's model name (results differ in the last digits between processors: their kernels differ): Linux's
    /proc/cpuinfo ``model name``, else ``platform.processor()``, else the machine type; with the logical core count."""
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name} ({os.cpu_count()} logical cores)"


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
        "device": str(device), "processor": processor_name(), "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
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


def saved_config(state: dict, run_dir: Path, trust_imports: bool = False):
    """The Config saved in the checkpoint ``state`` of the run in ``run_dir``; RunError when it no longer validates
    (a method's options renamed since, a plugin not imported) or names code to import that this process has not
    loaded and was not told to trust (``trust_imports``; peerkd/core/plugins.py)."""
    from peerkd.config import build_saved_config
    from peerkd.core.errors import ConfigError

    source = Path(run_dir) / CHECKPOINT
    try:
        return build_saved_config(state["config"], source=source, trust_imports=trust_imports)
    except ConfigError as err:
        raise RunError(f"the config saved in {source} no longer validates: {err}") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", trust_imports: bool = False) -> LoadedRun:
    """Rebuild the method of the run in ``run_dir`` from its checkpoint, in eval mode on ``device``. A run whose
    config names user code (``imports``) not loaded in this process is refused unless ``trust_imports`` (the code a
    run folder names is code from an artifact: check it first)."""
    from peerkd.core.method import TaskInfo
    from peerkd.core.registry import build_method

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    config = saved_config(state, run_dir, trust_imports)
    task = TaskInfo(**dict(state["task"], restoring=True))
    method = build_method(config.method.name, config.method.options, task)
    method.load_state_dict(state["method"])
    method.to(device).eval()
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return LoadedRun(run_dir, config, method, summary, state["epoch"], state.get("input"))
