"""What ``peerkd report`` computes: run folders back into the papers' tables, next to the papers' numbers.

A report reads only run folders (``config.yaml`` with its ``paper:`` block, ``summary.json``, ``environment.json``)
and never builds a method, so it works on runs made on another machine, and a new method needs nothing from it.

Runs are grouped by config: two runs belong together when their ``config.yaml`` agree on everything except the seed
and where they ran (``data.root``, ``trainer.device``, ...; see ``PLACEMENT_KEYS``). For each group and each cell of
its ``paper:`` block the paper's metric is taken from every seed's ``summary.json`` and aggregated by the paper's
protocol: ``median_of: N`` -> the median, otherwise the mean; the spread is the sample standard deviation over seeds
(n - 1 in the denominator, what ``statistics.stdev`` gives). The metric is read from the **last** epoch; ``--best``
reads the epoch of the best test top-1 instead, a choice made on the test set, and the report says so
(``--epochs last,best``: both, side by side).

Metric conversions (``summary.json`` holds top-1/top-5/ECE in %, NLL in nats, AURC/E-AURC x 1000, see
:mod:`peerkd.metrics`): ``error`` = 100 - top1, ``top5_error`` = 100 - top5; ``top1``, ``top5``, ``nll``, ``ece``,
``aurc``, ``eaurc`` as stored; ``diversity`` and ``agreement`` from the summary's ``diversity`` block, the cell's
``predict`` naming the diversity group (``branches``, ``peers``) rather than a predict key (diversity exists only for
the last epoch).

Verdicts, in this order: ``not enough seeds`` (fewer than the paper's N; with no N in the paper, fewer than 1);
``within the paper's ±`` (|ours - paper| <= the paper's std); ``within 2 std`` (|ours - paper| <= 2 x the std of our
seeds); ``off``.

The printed forms (markdown, CSV, LaTeX, a paper table as rows x columns, the figure, the RESULTS.md block) are in
:mod:`peerkd.experiments.render`. Each cell's 95 % bootstrap CI, the paired comparison of two configs and the ranking of
several are :mod:`peerkd.experiments.statistics` and :mod:`peerkd.experiments.compare`; the reproducibility columns
(device, devices, global batch, precision, torch, commit) are :func:`run_setup`.

Bad input: a RUNS_DIR that does not exist, or holds no usable run, is a :class:`ReportError` (exit 2). Inside a runs
folder, a folder that is not a run (no ``config.yaml``), a broken one (unreadable YAML/JSON, an invalid ``paper:``
block) or an unfinished one (no ``summary.json`` of all its epochs) is skipped with a warning line naming it; hidden
folders (``.submitit``) are passed over silently.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Sequence

import yaml

from peerkd.config import (PAPER_MEAN_PREFIX, ConfigError, PaperConfig, check_paper_block, config_keys, flatten_tree,
                           from_dict)
from peerkd.core.run_files import CHECKPOINT, CONFIG_FILE, ENVIRONMENT_FILE, RUN_MARKERS, SUMMARY_FILE

# keys that say where and how visibly a run ran, not what it computed (the schema's fields tagged placement), and the
# seed: runs differing only here are seeds of one group
PLACEMENT_KEYS = ("seed", *config_keys("placement"))
MAX_DEPTH = 3  # folder levels below a RUNS_DIR searched for run folders


class ReportError(ValueError):
    """Run folders that cannot be reported; the message says which and what to do."""


@dataclasses.dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    environment: dict
    paper: PaperConfig | None

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.name))


# ------------------------------------------------------------------------------------------------------ reading

def _is_run_folder(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def find_run_folders(roots: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run folders under ``roots`` (a root may itself be one) and the folders passed over, with the reason."""
    found: list[Path] = []
    foreign: list[tuple[Path, str]] = []

    def walk(folder: Path, depth: int) -> bool:
        """True when ``folder`` is or holds a run folder."""
        if _is_run_folder(folder):
            found.append(folder)
            return True
        if depth >= MAX_DEPTH:
            return False
        any_run = False
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            mark = len(foreign)
            if walk(child, depth + 1):
                any_run = True
            else:  # a folder without any run below it is named once, itself
                del foreign[mark:]
                foreign.append((child, f"not a run folder (no {', '.join(RUN_MARKERS)})"))
        return any_run

    for root in map(Path, roots):
        if not root.is_dir():
            raise ReportError(f"runs folder '{root}' does not exist; give folders that hold run folders "
                              "(peerkd sweep --out, peerkd train --out)")
        walk(root, 0)
    return found, foreign


def read_run(path: Path) -> Run:
    """One finished run folder; ``ValueError`` with a short reason when it cannot be used."""
    config_path, summary_path = path / CONFIG_FILE, path / SUMMARY_FILE
    if not config_path.is_file():
        raise ValueError(f"broken: no {CONFIG_FILE}")
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"broken: {CONFIG_FILE} unreadable ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise ValueError(f"broken: {CONFIG_FILE} holds no mapping")
    if not summary_path.is_file():
        raise ValueError(f"unfinished: no {SUMMARY_FILE}" if (path / CHECKPOINT).is_file()
                         else f"broken: no {SUMMARY_FILE} and no checkpoint")
    try:
        summary = json.loads(summary_path.read_text())
        keys = summary["keys"]
        assert isinstance(keys, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"broken: {SUMMARY_FILE} unreadable or without 'keys'") from None
    epochs = (config.get("schedule") or {}).get("epochs")
    if isinstance(epochs, int) and isinstance(summary.get("epochs"), int) and summary["epochs"] < epochs:
        raise ValueError(f"unfinished: summary of {summary['epochs']} of {epochs} epochs")
    paper = None
    if config.get("paper") is not None:
        try:
            paper = from_dict(PaperConfig, config["paper"], prefix="paper.")
            check_paper_block(paper)
        except ConfigError as err:
            raise ValueError(f"broken: invalid paper block ({err})") from None
    try:
        environment = json.loads((path / ENVIRONMENT_FILE).read_text())
    except (OSError, ValueError):
        environment = {}
    return Run(path, config, summary, environment if isinstance(environment, dict) else {}, paper)


def read_runs(roots: Sequence[str | Path], warn=None) -> list[Run]:
    """Every usable run under ``roots``; each folder passed over gets one warning line. No usable run at all is a
    :class:`ReportError`."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    folders, passed = find_run_folders(roots)
    runs = []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except ValueError as err:
            passed.append((folder, str(err)))
    for folder, reason in passed:
        warn(f"peerkd report: skipped {folder}: {reason}")
    if not runs:
        where = ", ".join(map(str, roots))
        raise ReportError(f"no finished run folder in {where}" + (f" ({len(passed)} folder(s) skipped, see above)"
                                                                   if passed else ""))
    return runs


# ----------------------------------------------------------------------------------------------------- grouping

def group_key(config: dict) -> str:
    tree = json.loads(json.dumps(config))
    for key in PLACEMENT_KEYS:
        path = key.split(".")
        node = tree
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return json.dumps(tree, sort_keys=True)


@dataclasses.dataclass
class Group:
    """The seeds of one config."""

    name: str
    runs: list[Run]

    @property
    def paper(self) -> PaperConfig | None:
        return self.runs[0].paper

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def setup(self) -> dict[str, str]:
        """The columns that decide whether a result can be reproduced, each the distinct values over the group's
        runs joined by commas ("?" where a run folder does not record it); see :func:`run_setup`."""
        per_run = [run_setup(run) for run in self.runs]
        return {column: ",".join(dict.fromkeys(setup[column] for setup in per_run)) for column in SETUP_COLUMNS}


SETUP_COLUMNS = ("device", "devices", "batch", "precision", "torch", "commit")


def run_setup(run: Run) -> dict[str, str]:
    """One run's reproducibility columns, from its ``environment.json`` and ``config.yaml``: the device type (the
    GPU's name on CUDA), the number of processes (DDP world size), the global batch size (``data.batch_size``,
    summed over ranks), the precision the run resolved, the torch version and the commit (``+dirty`` with local
    changes). A run folder written before ``world_size`` / ``precision`` were recorded gives "?" for the count and,
    for a requested ``trainer.precision: auto``, the precision only where it is certain (fp32 on CPU)."""
    env, config = run.environment, run.config
    device = str(env.get("device_name") or str(env.get("device") or "?").split(":")[0])
    precision = env.get("precision")
    if precision is None:
        asked = str((config.get("trainer") or {}).get("precision", "auto"))
        precision = "fp32" if asked == "auto" and device == "cpu" else asked
    sha = env.get("git_sha")
    return {"device": device, "devices": str(env.get("world_size", "?")),
            "batch": str((config.get("data") or {}).get("batch_size", "?")), "precision": str(precision),
            "torch": str(env.get("torch") or "?"),
            "commit": (str(sha)[:7] + ("+dirty" if env.get("git_dirty") else "")) if sha else "?"}


def group_runs(runs: Sequence[Run], warn=None) -> list[Group]:
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    groups: dict[str, Group] = {}
    for run in sorted(runs, key=lambda r: (r.name, r.seed, str(r.path))):
        group = groups.setdefault(group_key(run.config), Group(run.name, []))
        twin = next((r for r in group.runs if r.seed == run.seed), None)
        if twin is not None:
            warn(f"peerkd report: skipped {run.path}: seed {run.seed} of {run.name} is already counted from "
                 f"{twin.path}")
            continue
        group.runs.append(run)
    out = list(groups.values())
    names = [g.name for g in out]
    for group in out:  # two configs of one name: tell them apart by the keys where they differ
        if names.count(group.name) > 1:
            group.name = f"{group.name} ({_difference(group, [g for g in out if g.name == group.name])})"
    return out


def _difference(group: Group, namesakes: list[Group]) -> str:
    mine = flatten_tree(json.loads(group_key(group.runs[0].config)))
    others = [flatten_tree(json.loads(group_key(g.runs[0].config))) for g in namesakes if g is not group]
    keys = sorted(k for k in mine if any(o.get(k) != mine[k] for o in others))
    return ", ".join(f"{k}={mine[k]}" for k in keys[:3]) or "same config"


# -------------------------------------------------------------------------------------------------- aggregation

def metric_value(summary: dict, metric: str, key: str, best: bool = False) -> float:
    """The number a paper cell of ``metric`` compares with, from one run's summary (``KeyError`` when absent);
    ``key`` may be ``mean:k1,k2,...`` (PaperCell.predict), the paper's mean of that metric over those keys."""
    if key.startswith(PAPER_MEAN_PREFIX):
        keys = key[len(PAPER_MEAN_PREFIX):].split(",")
        return statistics.fmean(metric_value(summary, metric, k, best) for k in keys)
    if metric in ("agreement", "diversity"):
        block = summary.get("diversity") or {}
        return float(block[key if metric == "diversity" else f"{key}_agreement"])
    entry = summary["keys"][key]["best" if best else "last"]
    if entry is None:
        raise KeyError(key)
    if metric == "error":
        return 100.0 - float(entry["top1"])
    if metric == "top5_error":
        return 100.0 - float(entry["top5"])
    return float(entry[metric])


@dataclasses.dataclass
class Aggregate:
    """Seeds' values of one metric aggregated by a protocol, and the verdict against the paper's number."""

    values: list[float]
    protocol: str  # "mean" or "median"
    required: int  # seeds the paper's protocol asks for (1 when it names none)
    paper: float | None = None
    paper_std: float | None = None
    seeds: list[int] = dataclasses.field(default_factory=list)  # the seed of each value, in the same order

    @property
    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def ours(self) -> float | None:
        if not self.values:
            return None
        return statistics.median(self.values) if self.protocol == "median" else statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    @property
    def verdict(self) -> str:
        if self.paper is None:
            return "no paper value"
        if self.n < self.required:
            return f"not enough seeds ({self.n} of {self.required})"
        gap = abs(self.difference)
        if self.paper_std is not None and gap <= self.paper_std:
            return "within the paper's ±"
        if self.std is not None and gap <= 2 * self.std:
            return "within 2 std"
        return "off"


@dataclasses.dataclass
class Row:
    """One line of a report: a paper cell (or, for a config without one, a predict key and a metric)."""

    group: Group
    paper_id: str
    table: str
    row: str
    column: str
    metric: str
    key: str
    result: Aggregate
    missing: list[str]  # runs in which the key was absent

    @property
    def commits(self) -> str:
        return self.group.setup["commit"]

    @property
    def command(self) -> str:
        return sweep_command(self.group)


def sweep_command(group: Group) -> str:
    """The ``peerkd sweep`` command that makes this group's runs, rebuilt from the first run's command line (its
    config file and ``--set`` overrides, the seed taken out); the raw command when it had no ``-c``."""
    argv = list(group.runs[0].environment.get("argv") or [])
    args, config, sets = argv[1:], None, []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            config = args[i + 1]
        if arg == "--set" and i + 1 < len(args) and not args[i + 1].startswith("seed="):
            sets.append(args[i + 1])
    if config is None:
        return "peerkd " + " ".join(map(shlex.quote, args)) if args else "?"
    out = str(group.runs[0].path.parent)
    seeds = ",".join(map(str, sorted(group.seeds)))
    words = ["peerkd", "sweep", config, "--seeds", seeds, *[w for s in sets for w in ("--set", s)], "--out", out]
    return " ".join(map(shlex.quote, words))


def rows_of(groups: Sequence[Group], metrics: Sequence[str] = (), best: bool = False) -> list[Row]:
    """Every paper cell of every group (only those of ``metrics`` when given); a group without a ``paper:`` block
    gives one row per predict key and metric (``metrics`` or top1)."""
    rows = []
    for group in groups:
        paper = group.paper
        if paper is None or not paper.cells:  # no paper table (or a foundation config): every key, ours only
            keys = list(group.runs[0].summary["keys"])
            diversity_groups = [g for g in (group.runs[0].summary.get("diversity") or {})
                                if not g.endswith("_agreement")]  # agreement and diversity are per group of keys
            cells = [(("", "", group.name, key, metric, key), None, None) for metric in (metrics or ["top1"])
                     for key in (diversity_groups if metric in ("agreement", "diversity") else keys)]
            protocol, required = "mean", 1
        else:
            cells = [((paper.id, c.table or paper.table, c.row, c.column, c.metric, c.predict), c.value, c.std)
                     for c in paper.cells if not metrics or c.metric in metrics]
            protocol = "median" if paper.median_of else "mean"
            required = paper.median_of or paper.mean_of or 1
        for (paper_id, table, row, column, metric, key), value, std in cells:
            values, seeds, missing = [], [], []
            for run in group.runs:
                try:
                    values.append(metric_value(run.summary, metric, key, best=best and metric not in (
                        "agreement", "diversity")))
                    seeds.append(run.seed)
                except (KeyError, TypeError, ValueError):
                    missing.append(str(run.path))
            rows.append(Row(group, paper_id, table, row, column, metric, key,
                            Aggregate(values, protocol, required, value, std, seeds), missing))
    # by paper and table; within a table, the groups by name and each group's cells in its paper: block's order
    return sorted(rows, key=lambda r: (r.paper_id == "", r.paper_id, _natural(r.table)))


def _natural(text: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in text.replace("-", " ").split()]


# ---------------------------------------------------------------------------------------------------------- CLI


