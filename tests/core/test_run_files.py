"""A run folder's file names live in peerkd.core.run_files alone: no other module of the package spells one in code
(docstrings and comments may name them)."""
import ast
from pathlib import Path

from peerkd.core import run_files

PACKAGE = Path(run_files.__file__).resolve().parents[1]
NAMES = [value for name, value in vars(run_files).items() if name.isupper() and isinstance(value, str)]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _spellings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            hits += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {name!r}" for name in NAMES
                     if "." in name[1:] and name in node.value]  # file names, not the word "export"
    return hits


def test_the_names_are_the_files_a_run_writes():
    assert {run_files.CONFIG_FILE, run_files.SUMMARY_FILE, run_files.CHECKPOINT, run_files.PREVIOUS_CHECKPOINT,
            run_files.METRICS_LOG, run_files.HISTORY_LOG, run_files.ENVIRONMENT_FILE, run_files.SWEEP_LOG,
            run_files.LOCK_FILE} == {"config.yaml", "summary.json", "checkpoint.pt", "checkpoint.prev.pt",
                                     "metrics.jsonl", "history.jsonl", "environment.json", "sweep.log", ".peerkd.lock"}
    assert set(run_files.RUN_MARKERS) <= set(NAMES)


def test_no_other_module_spells_a_run_file_name():
    hits = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "run_files.py" for hit in _spellings(path)]
    assert not hits, "use peerkd.core.run_files instead of:\n" + "\n".join(hits)
