"""Branch diversity over training (CSS Fig. 3) from runs' ``metrics.jsonl``.

Every evaluation record (``{"kind": "eval", "epoch": e, "metrics": {..., "diversity": {group: distance,
group_agreement: kappa}}}``, read by :meth:`peerkd.metrics.EvalResult.from_record`) holds the mean Euclidean distance
between the probability vectors of each ``diversity_groups()`` group; with ``trainer.eval_every: 1`` that is one
point per epoch. Groups named ``mutual<j>`` (CSS: branch j of net 1 against branch j of net 2) are also averaged into
one ``mutual`` curve.

    peerkd plot diversity runs/css_resnet110_2x2 runs/dml_resnet110 -o diversity.png [--group branches]
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from peerkd.core.run_files import DIVERSITY_PLOT, METRICS_LOG
from peerkd.metrics import EvalResult


def load_diversity(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{group: [(epoch, distance), ...]}`` from a run folder or its ``metrics.jsonl``, epochs counted from 1."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder or its {METRICS_LOG}")
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("kind") != "eval":
            continue
        groups = EvalResult.from_record(record.get("metrics", {})).groups
        diversity = {group: measures["diversity"] for group, measures in groups.items() if "diversity" in measures}
        epoch = int(record["epoch"]) + 1
        for group, value in diversity.items():
            curves.setdefault(group, []).append((epoch, value))
        mutual = [v for g, v in diversity.items() if re.fullmatch(r"mutual\d+", g)]
        if mutual:
            curves.setdefault("mutual", []).append((epoch, sum(mutual) / len(mutual)))
    return curves


def default_output(runs: list[str | Path]) -> Path:
    """``diversity.png`` in the (first) run's folder, not in the current folder."""
    first = Path(runs[0])
    return (first if first.is_dir() else first.parent) / DIVERSITY_PLOT


def plot_diversity(runs: list[str | Path], out: str | Path, groups: list[str] | None = None,
                   labels: list[str] | None = None) -> Path:
    """Draw one line per (run, group) and save the figure to ``out``; ``groups`` defaults to ``["branches"]`` where
    a run has it, else all its groups."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting diversity needs matplotlib: pip install matplotlib") from None
    chosen_curves = []
    for i, run in enumerate(runs):  # every run and group is checked before anything is drawn
        curves = load_diversity(run)
        if not curves:
            raise KeyError(f"{run} has no diversity curves: its method measures no group of predictions, or no "
                           "evaluation has run yet")
        missing = [g for g in groups or () if g not in curves]
        if missing:
            raise KeyError(f"{run} has no diversity group {', '.join(map(repr, missing))}; its groups are: "
                           f"{', '.join(sorted(curves))} (choose with --group)")
        chosen = groups or (["branches"] if "branches" in curves else sorted(curves))
        chosen_curves.append((labels[i] if labels else Path(run).name, chosen, curves))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, chosen, curves in chosen_curves:
        for group in chosen:
            epochs, values = zip(*curves[group])
            ax.plot(epochs, values, label=f"{name} {group}" if len(chosen) > 1 else name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean Euclidean distance between branch predictions")
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out

