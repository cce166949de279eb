"""User code: modules that register methods, models or datasets, loaded before a config is validated.

Three ways in, all ending in an ordinary Python import whose module calls ``register_method`` / ``register_model`` /
``register_dataset`` at import time:

- ``--import MODULE_OR_FILE`` on the command line (repeatable) and ``imports:`` in a YAML config (a list): a path
  ending in ``.py`` (or containing a ``/``) is imported from that file, anything else as a module name from
  ``sys.path``. A relative path in a YAML file is relative to that file's folder; on the command line, to the
  current folder.
- Installed packages: every entry point of the group ``peerkd.plugins`` (``importlib.metadata``) is loaded once per
  process, before the first config is validated. A package declares it in its ``pyproject.toml``::

      [project.entry-points."peerkd.plugins"]
      my_methods = "my_package.peerkd_methods"

The resolved imports (absolute file paths, module names) are part of the config, with the SHA-256 of each file
(``import_digests``), so a run folder's ``config.yaml`` and checkpoint name the code the run was trained with. A file
is imported once per process (keyed by its absolute path), so naming it twice registers nothing twice. A missing or
failing import is a :class:`~peerkd.core.errors.ConfigError` naming it.

**A run folder is data, not code.** Loading a run (``peerkd eval`` / ``export`` / ``plot``, ``train --resume``
without ``-c``, :func:`peerkd.load_run`, a KD teacher run) whose recorded imports are not already loaded in the process
is refused (:func:`check_recorded_imports`), naming each file and how to allow it — the convention of the Hugging
Face libraries' ``trust_remote_code``: ``--trust-imports`` on the command line (``trust_imports=True`` in Python), or
the same ``--import`` again. A recorded file path that is not absolute is never resolved against the current folder,
and a file whose SHA-256 differs from the recorded one is reported before it is trusted.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

ENTRY_POINT_GROUP = "peerkd.plugins"

_loaded_files: dict[str, object] = {}  # absolute path -> module, so a file runs once per process
_entry_points_loaded = False
_trust_recorded = False  # --trust-imports: this process may run the code a run folder names (the CLI sets it)
DIGEST_PREFIX = "sha256:"  # recorded digests name their hash, so another one can follow without ambiguity


def _error(message: str):
    from peerkd.core.errors import ConfigError

    return ConfigError(message)


def is_file_spec(spec: str) -> bool:
    """True for a file path (``my_method.py``, ``plugins/m.py``, ``./m``), False for a module name (``my_pkg.m``)."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve_import(spec: str, base: str | Path | None = None) -> str:
    """The recorded form of ``spec``: a file as its absolute path (relative ones taken from ``base``, default the
    current folder), a module name unchanged."""
    spec = str(spec).strip()
    if not spec:
        raise _error("imports: an empty entry; give a module name or a .py file")
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base or ".") / path
    return str(path.resolve())


def _summary(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def import_one(spec: str) -> object:
    """Import ``spec`` (already resolved: an absolute file path or a module name) and return the module."""
    if not is_file_spec(spec):
        try:
            return importlib.import_module(spec)
        except ModuleNotFoundError as err:
            if err.name and spec.startswith(err.name):
                raise _error(f"imports: no module named '{spec}' on the Python path; give its .py file instead, or "
                             "install the package that holds it") from None
            raise _error(f"imports: importing '{spec}' failed ({_summary(err)})") from None
        except Exception as err:  # the user's code: any error it raises while registering
            raise _error(f"imports: importing '{spec}' failed ({_summary(err)})") from None
    if spec in _loaded_files:
        return _loaded_files[spec]
    path = Path(spec)
    if not path.is_file():
        raise _error(f"imports: no file '{spec}'; give an existing .py file (relative paths in a YAML config are "
                     "relative to its folder) or a module name")
    tag = hashlib.sha1(spec.encode()).hexdigest()[:8]
    name = f"peerkd_user_{path.stem.replace('-', '_')}_{tag}"  # unique per path: two files named alike both load
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise _error(f"imports: '{spec}' cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so dataclasses, pickling and relative look-ups inside it find the module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any error it raises while registering
        del sys.modules[name]
        raise _error(f"imports: importing '{spec}' failed ({_summary(err)})") from None
    _loaded_files[spec] = module
    return module


def load_entry_points() -> list[str]:
    """Load every ``peerkd.plugins`` entry point of the installed packages (once per process); return their names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # an installed package's code
            _entry_points_loaded = False  # let a later call report it again rather than run without it
            raise _error(f"plugin '{entry.name}' ({entry.value}, entry point group {ENTRY_POINT_GROUP}) failed to "
                         f"load ({_summary(err)}); fix or uninstall that package") from None
        names.append(entry.name)
    return names


def load_imports(specs: Iterable[str], base: str | Path | None = None) -> list[str]:
    """Load the installed plugins and then every module or file of ``specs``, in order; return the resolved specs
    (duplicates dropped), as a config records them."""
    load_entry_points()
    resolved: list[str] = []
    for spec in specs:
        spec = resolve_import(spec, base)
        if spec not in resolved:
            import_one(spec)
            resolved.append(spec)
    return resolved


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (what a config records for each imported file)."""
    return DIGEST_PREFIX + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def import_digests(specs: Iterable[str]) -> dict[str, str]:
    """``{absolute file path: file_digest}`` for the file imports among ``specs`` (resolved; module names skipped)."""
    return {spec: file_digest(spec) for spec in specs if is_file_spec(spec) and Path(spec).is_file()}


def trust_recorded_imports(trust: bool = True) -> None:
    """Let (or stop letting) this process import the code that run folders name (``--trust-imports``)."""
    global _trust_recorded
    _trust_recorded = trust


def is_loaded(spec: str) -> bool:
    """Whether ``spec`` (a resolved import) already ran in this process: a file through :func:`import_one`, a module
    name through any import."""
    return spec in _loaded_files if is_file_spec(spec) else spec in sys.modules


def check_recorded_imports(specs, digests, source: str | Path, trust: bool = False) -> None:
    """Refuse the imports a run folder's config records (``specs``, with their recorded ``digests``) unless each is
    already loaded in this process, or the caller trusts the run (``trust``, or ``--trust-imports`` for the whole
    process). A recorded file path that is not absolute is refused even when trusted: it would be resolved against
    whatever the current folder is. A trusted file whose SHA-256 differs from the recorded one is reported (a
    warning) before it is imported. Raises :class:`~peerkd.core.errors.RunError` (exit 2), having run nothing."""
    import warnings

    from peerkd.core.errors import RunError

    if isinstance(specs, str):
        specs = [specs]
    specs = [str(spec) for spec in specs or []]
    digests = digests if isinstance(digests, dict) else {}
    relative = [spec for spec in specs if is_file_spec(spec) and not Path(spec).is_absolute()]
    if relative:
        raise RunError(f"{source} records imports by relative path ({', '.join(relative)}); peerkd does not resolve "
                       "them against the current folder: load the files yourself with --import PATH")
    untrusted = [spec for spec in specs if not is_loaded(spec)]
    if untrusted and not (trust or _trust_recorded):
        raise RunError(f"{source} names code to import: {', '.join(untrusted)}; peerkd runs no code a run names "
                       "unless told: check it, then pass --trust-imports (Python: trust_imports=True) or --import it")
    for spec in specs:
        recorded = digests.get(spec)
        if recorded and Path(spec).is_file() and file_digest(spec) != recorded:
            warnings.warn(f"imports: {spec} changed since the run was made (its SHA-256 differs from the recorded "
                          "one): the run's method may not be the code it was trained with", stacklevel=2)


__all__ = ["ENTRY_POINT_GROUP", "check_recorded_imports", "file_digest", "import_digests", "import_one", "is_loaded",
           "load_entry_points", "load_imports", "resolve_import", "trust_recorded_imports"]
