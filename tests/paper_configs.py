"""Shared checks of the per-paper config tests (tests/test_paper00*_configs.py): every table cell has a config,
every config of a paper has its ``paper:`` block, the block agrees with the paper's table and the config's header,
and the block's predict keys are keys of the method's ``predict()``."""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import peerkd
from tests.paper_tables import METRIC, NOT_RUN, PROTOCOL, TABLES

ROOT = Path(__file__).resolve().parents[1] / "configs"
OTHER_HELPER = ("mde/table6", "mde/fig3")  # configs/mde/table6/** and fig3/** carry their own blocks and tests


def configs_under(*folders: str) -> list[Path]:
    paths = sorted(p for folder in folders for p in (ROOT / folder).rglob("*.yaml"))
    return [p for p in paths if not any(part in p.as_posix() for part in OTHER_HELPER)]


@lru_cache(maxsize=None)
def load(path: Path):
    return peerkd.load_config(path)


def header(path: Path) -> str:
    """The config's leading comment block (its free-text description of the cell and the recipe)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines)


def notes_deviation(text: str) -> bool:
    """The header explains why a setting differs from the paper's ("... a deviation from the paper's T = 2 ...")."""
    return re.search(r"deviation\s+from", text, re.IGNORECASE) is not None


def header_numbers(path: Path) -> set[float]:
    return {float(n) for n in re.findall(r"\d+\.\d+|\d+", header(path))}


def cell_table(paper, cell) -> str:
    return cell.table or paper.table


def covered_cells(paths: list[Path], paper_id: str) -> set[tuple]:
    out = set()
    for path in paths:
        paper = load(path).paper
        if paper is not None and paper.id == paper_id:
            out |= {(cell_table(paper, c), c.row, c.column) for c in paper.cells}
    return out


def check_coverage(paper_id: str, paths: list[Path]) -> None:
    """Every cell of the paper's tables (but the NOT_RUN ones) is produced by some config."""
    covered = covered_cells(paths, paper_id)
    wanted = {(table, row, column) for table, cells in TABLES[paper_id].items() for row, column in cells}
    wanted -= {(t, r, c) for p, t, r, c in NOT_RUN if p == paper_id}
    assert not wanted - covered, f"table cells of paper {paper_id} without a config: {sorted(wanted - covered)}"


def check_block(path: Path, paper_id: str, protocol: str | None = None) -> None:
    """The block names the paper, its cells hold the paper's printed numbers, and the header states each number."""
    paper = load(path).paper
    assert paper is not None and paper.id == paper_id, f"{path}: no paper: block of paper {paper_id}"
    expected = PROTOCOL[protocol or paper_id]
    assert (paper.mean_of, paper.median_of) == (expected.get("mean_of", 0), expected.get("median_of", 0)), path
    numbers = header_numbers(path)
    for cell in paper.cells:
        table = cell_table(paper, cell)
        assert table in TABLES[paper_id], f"{path}: paper {paper_id} has no table '{table}' here"
        printed = TABLES[paper_id][table].get((cell.row, cell.column))
        assert printed is not None, f"{path}: no cell ({cell.row!r}, {cell.column!r}) in table {table}"
        assert (cell.value, cell.std) == printed, f"{path}: {cell.row} / {cell.column}: {cell.value} != {printed}"
        if paper_id in METRIC and table != "fig4":
            assert cell.metric in (METRIC[paper_id], "top5"), f"{path}: metric {cell.metric}"
        assert cell.value in numbers, f"{path}: the header does not state {cell.value} ({cell.row} / {cell.column})"
    assert paper.cells, path


# ------------------------------------------------------------------------------------------------ predict keys

def _small(options, method: str):
    """The method's options with every backbone swapped for a small one of the same depth in stages."""
    options = copy.deepcopy(options)
    deep = method in ("pskd_ml", "byot") or getattr(options, "split_stages", [0])[-1] >= 3
    small = "resnet18" if deep else "resnet8"
    if hasattr(options, "models"):
        options.models = [small] * len(options.models)
    if hasattr(options, "model"):
        options.model = small
    if deep and hasattr(options, "model_options"):
        options.model_options = {**options.model_options, "width": 8}
    elif hasattr(options, "model_options"):  # the big network's own options (a VGG's dropout) do not fit resnet8
        options.model_options = {}
    return options


def _signature(config) -> str:
    small = _small(config.method.options, config.method.name)
    return f"{config.method.name}:{small!r}"


@lru_cache(maxsize=None)
def _keys(signature: str, path: Path) -> frozenset:
    from peerkd.methods import build_method
    from peerkd.core.method import TaskInfo

    config = load(path)
    options = _small(config.method.options, config.method.name)
    method = build_method(config.method.name, options, TaskInfo(num_classes=10, image_size=32, num_train=16))
    with torch.no_grad():
        return frozenset(method.eval().predict(torch.randn(2, 3, 32, 32)))


def check_predict_keys(paths: list[Path]) -> None:
    """Each cell's predict keys are keys of its method's predict() (built once per method structure, small nets)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: one thread is fastest, two spin-wait on a loaded 2-core machine
    try:
        _check_predict_keys(paths)
    finally:
        torch.set_num_threads(threads)


def _check_predict_keys(paths: list[Path]) -> None:
    seen = {}
    for path in paths:
        config = load(path)
        if config.paper is None or not config.paper.cells:
            continue
        wanted = {k for cell in config.paper.cells for k in cell.predict_keys()}
        if config.method.name == "kd":  # its teacher is a trained run folder: predict() gives student and teacher
            assert wanted <= {"student", "teacher"}, path
            continue
        signature = _signature(config)
        if signature not in seen:
            seen[signature] = _keys(signature, path)
        assert wanted <= seen[signature], f"{path}: {sorted(wanted - seen[signature])} not in {sorted(seen[signature])}"


def pending_value(path: Path, value, old, reason: str) -> None:
    """xfail while another branch's change of this value line (to the paper's setting) has not been merged yet."""
    if value == old:
        pytest.xfail(f"{path.relative_to(ROOT)}: {reason}")
