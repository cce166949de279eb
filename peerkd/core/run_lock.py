"""An exclusive lock on a run folder, held by the one process that writes it, for that process's whole life.

The lock is ``fcntl.flock`` on ``<run>/.peerkd.lock``: the kernel drops it when the process ends, however it ends
(kill -9 included), so a lock left by a dead process is never in the way; the file's contents (pid, host, start time
of the holder) only serve the message a second writer gets. Where ``fcntl`` is missing (Windows) the file itself is
the lock (created exclusively, removed on release) and a lock whose holder is a dead process of this host is taken
over.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from peerkd.core.errors import RunError
from peerkd.core.run_files import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunLock:
    """``acquire()`` takes the lock of ``run_dir`` (which must exist) or raises RunError naming the holder's pid;
    ``release()`` gives it back (also done by the kernel when the process ends)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        if self.held:
            return
        if fcntl is None:
            self._acquire_by_file()
        else:
            self._acquire_by_flock()
        os.ftruncate(self.fd, 0)
        os.write(self.fd, (json.dumps(_holder()) + "\n").encode())

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if fcntl is None:
            os.close(fd)
            self.path.unlink(missing_ok=True)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire_by_flock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._in_use() from None
            raise
        self.fd = fd

    def _acquire_by_file(self) -> None:
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                return
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") != socket.gethostname() or _alive(holder.get("pid")):
                    raise self._in_use() from None
                self.path.unlink(missing_ok=True)  # its process is gone: take the lock over
        raise self._in_use()

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _in_use(self) -> RunError:
        who = describe_holder(self._holder())
        return RunError(f"{self.path.parent} is in use by another peerkd process ({who}); wait for it to finish, "
                        "or write this run elsewhere with --out")


def describe_holder(holder: dict) -> str:
    """``pid 123 on host, started <time>`` for a lock holder (``?`` where its file does not say)."""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who holds ``run_dir``'s lock when another live process does (``{"pid", "host", "started"}``, or ``{}`` when its
    file says nothing), else None. ``peerkd sweep`` asks before it starts a run: a run alive in another process (an
    earlier sweep killed with its runs left running, a second sweep into the same folder) is waited for, never
    started twice. It probes by taking the lock for an instant: a writer starting in that instant is refused and
    the sweep's retry takes it up."""
    if not (Path(run_dir) / LOCK_FILE).exists():
        return None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunError:
        return lock._holder()
    except OSError:  # the folder vanished or cannot be written: nobody holds it
        return None
    lock.release()
    return None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
