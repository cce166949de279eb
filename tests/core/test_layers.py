"""The layers of ARCHITECTURE.md, checked on the source: every import (function-level ones included) of a module
goes to a layer it may use, and the import graph has no circle. A new module or a new import that breaks a rule
fails here with the edge that breaks it."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "peerkd"

# layer -> the layers its modules may import (its own included); ARCHITECTURE.md's table
LAYERS = {
    "core": {"core"},
    "schema": {"core", "schema"},
    "maths": {"core", "schema", "maths"},
    "models": {"core", "schema", "maths", "models"},
    "data": {"core", "schema", "maths", "data"},
    "methods": {"core", "schema", "maths", "models", "data", "methods"},
    "training": {"core", "schema", "maths", "models", "data", "training"},
    "experiments": {"core", "schema", "experiments"},
    "deploy": {"core", "schema", "maths", "models", "data", "training", "deploy"},
    "plots": {"core", "schema", "maths", "data", "training", "plots"},
    "interface": {"core", "schema", "maths", "models", "data", "methods", "training", "experiments", "deploy",
                  "plots", "interface"},
}
EXCEPTIONS = {  # (module, imported module) edges that cross a layer on purpose, each with its reason
    ("peerkd.core.method", "peerkd.models.base"): "the capability check asks the Backbone contract at build time",
    ("peerkd.core.method", "peerkd.models.registry"): "the capability check builds the named model at build time",
    ("peerkd.methods.kd", "peerkd.training.checkpoint"): "KD reads its teacher from a finished run folder",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "interface"
    if parts[1] in ("losses", "metrics", "params"):
        return "maths"
    if parts[1] == "config":
        return "schema"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The peerkd modules ``name`` imports (resolved to the longest known module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("peerkd") and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_every_module_has_a_layer():
    assert {layer_of(name) for name in GRAPH} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_layers(module):
    allowed = LAYERS[layer_of(module)]
    wrong = sorted(t for t in GRAPH[module] if layer_of(t) not in allowed and (module, t) not in EXCEPTIONS)
    assert not wrong, f"{module} ({layer_of(module)}) imports {wrong}: see ARCHITECTURE.md for what it may import"


def test_no_import_circles():
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_exceptions_are_still_needed():
    stale = [edge for edge in EXCEPTIONS if edge[1] not in GRAPH.get(edge[0], set())]
    assert not stale, f"remove these layer exceptions, the import is gone: {stale}"


def test_architecture_md_names_these_layers_and_existing_paths():
    """ARCHITECTURE.md's table has one row per layer of LAYERS, and every package path it names exists."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    rows = [line.split("|") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    assert {cells[1].strip() for cells in rows} == set(LAYERS)
    named = {path for cells in rows for path in re.findall(r"`(peerkd/[\w/.]*)`", cells[2])}
    assert named and all((PACKAGE.parent / path).exists() for path in named), named
