"""What every golden generator shares: a reference repository checked out at its commit into a temporary folder,
its modules imported from there, ``.cuda()`` and APIs that newer torch removed patched at run time, and the fixture
written in the suite's format (``tests/golden/fixture.py``). The reference code is read here, run, and thrown away:
nothing of it is copied into peerkd.

A generator is ``python tools/golden/<name>.py --repo PATH [--out tests/golden/fixtures]``, where PATH is a clone of
the reference repository (a work tree or a bare git dir, e.g. the mirror the search tool's ``fetch`` gives) that holds
the pinned commit; the generator refuses another commit.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the peerkd checkout
sys.path.insert(0, str(ROOT))
from tests.golden import fixture  # noqa: E402  (the one definition of the format)

DEFAULT_OUT = ROOT / "tests" / "golden" / "fixtures"


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repo", required=True, type=Path, help="a clone (work tree or bare git dir) of the reference")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .npz fixtures go")
    return parser.parse_args()


def _git_dir(repo: Path) -> Path:
    repo = repo.resolve()
    for candidate in (repo / ".git", repo):
        if (candidate / "objects").is_dir():
            return candidate
    raise SystemExit(f"{repo}: not a git clone (no .git/objects); clone the reference repository there first")


@contextlib.contextmanager
def checkout(repo: Path, commit: str, paths: list[str] | None = None):
    """The tree of ``repo`` at ``commit`` (full SHA) in a temporary folder, on ``sys.path`` while inside; only
    ``paths`` (files or folders) when given, for a clone whose large files (checkpoints) are absent."""
    git_dir = _git_dir(repo)
    found = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet",
                            f"{commit}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != commit:
        raise SystemExit(f"{repo}: commit {commit} not found; fetch it (the fixture is pinned to that commit)")
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", commit,
                                  *(paths or [])], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        sys.path.insert(0, tmp)
        try:
            yield Path(tmp)
        finally:
            sys.path.remove(tmp)
            for name in [m for m, mod in sys.modules.items() if (getattr(mod, "__file__", "") or "").startswith(tmp)]:
                del sys.modules[name]  # the next checkout imports its own modules of the same names


def import_file(root: Path, relative: str, name: str | None = None):
    """Import ``root/relative`` (a .py file of the reference) as a module named ``name`` (default: its stem)."""
    path = root / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def cpu_only():
    """``.cuda()`` of tensors and modules returns them unchanged (the references call it unconditionally)."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


def write(out: Path, name: str, repository: str, commit: str, files: list[str], case: dict,
          arrays: dict) -> Path:
    """Write ``out/<name>.npz`` with the meta every fixture carries."""
    generator = Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix()
    meta = {"reference": repository, "commit": commit, "files": files, "case": case, "generator": generator,
            "command": f"python {generator} --repo PATH_TO_{repository.split('/')[-1]}",
            "torch": torch.__version__, "created": datetime.date.today().isoformat()}
    path = out / f"{name}.npz"
    fixture.save(path, meta, arrays)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size / 1024:.0f} KiB")
    return path


def named_grads(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{prefix + parameter name: its .grad}`` (zeros where a parameter got no gradient)."""
    return {prefix + k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
            for k, p in module.named_parameters()}


def named_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}`` of the module's state_dict (parameters and buffers), copied."""
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}
