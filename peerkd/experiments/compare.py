"""``peerkd report --compare A B`` / ``--baseline CONFIG`` / ``--rank``: configs set against each other over their
seeds, from the cells :mod:`peerkd.experiments.aggregate` read (the statistics are
:mod:`peerkd.experiments.statistics`).

A config is named by its ``name`` (as the report prints it, or the run's ``name`` when only one config has it) or by
a folder holding its runs. Two configs are compared on every (metric, predict key) both have, pairing runs by seed;
seeds only one of them has are listed as unpaired, never paired with anything. The pairs share the data order when
the two configs' ``data`` sections agree (the loader's order follows the seed and the data keys); when they do not,
the report says which data keys differ.

Bad input (a :class:`ReportError`, one line, exit 2, raised before any statistic is computed): a config name or
folder that matches no config or several, two configs without a common seed or without a common (metric, key),
``--rank`` over fewer than 3 configs or of a metric without a direction.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

from peerkd.config import flatten_tree
from peerkd.experiments.aggregate import Group, ReportError, Row, group_key
from peerkd.experiments.statistics import CI_METHOD, CONFIDENCE, HIGHER_IS_BETTER, Paired, Ranking, paired, rank


def find_group(spec: str, groups: Sequence[Group]) -> Group:
    """The config ``spec`` names: a folder holding (only) its runs, its report name, or its runs' ``name``."""
    folder = Path(spec)
    if folder.is_dir():
        where = folder.resolve()
        inside = [g for g in groups if all(where == r.path.resolve() or where in r.path.resolve().parents
                                           for r in g.runs)]
        if len(inside) == 1:
            return inside[0]
        if not inside:
            raise ReportError(f"'{spec}' holds no config of these runs on its own (give a folder of one config's runs, "
                              f"or a config's name: {_names(groups)})")
        raise ReportError(f"'{spec}' holds {len(inside)} configs ({_names(inside)}); name one of them instead")
    matches = [g for g in groups if g.name == spec] or [g for g in groups if g.runs[0].name == spec]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ReportError(f"no config named '{spec}' in these runs; configs: {_names(groups)}")
    raise ReportError(f"{len(matches)} configs are named '{spec}' ({_names(matches)}); give the full name in "
                      "quotes or a folder holding one config's runs")


def _names(groups: Sequence[Group]) -> str:
    return ", ".join(f"'{g.name}'" for g in groups)


def _cells_of(rows: Sequence[Row], group: Group) -> dict[tuple[str, str], Row]:
    """The group's rows by (metric, predict key), the first of each (a paper cell repeated in two tables is one)."""
    out: dict[tuple[str, str], Row] = {}
    for row in rows:
        if row.group is group and row.result.values:
            out.setdefault((row.metric, row.key), row)
    return out


def data_differences(a: Group, b: Group) -> list[str]:
    """The ``data.*`` keys (placement keys aside) in which the two configs differ: where they do, a seed no longer
    gives both the same data order."""
    flat = [flatten_tree(json.loads(group_key(g.runs[0].config)).get("data") or {}) for g in (a, b)]
    return sorted(f"data.{k}" for k in set(flat[0]) | set(flat[1]) if flat[0].get(k) != flat[1].get(k))


@dataclasses.dataclass
class Comparison:
    baseline: Group
    other: Group
    metric: str
    key: str
    result: Paired


def check_pairs(rows: Sequence[Row], baseline: Group, others: Sequence[Group]) -> list[tuple[Group, list]]:
    """For each config against ``baseline``, the (metric, key) both have; ReportError when a config has no seed in
    common with the baseline or no cell in common (checked for all before anything is computed)."""
    if any(o is baseline for o in others):
        raise ReportError(f"'{baseline.name}' is compared with itself; name two different configs")
    base = _cells_of(rows, baseline)
    out = []
    for other in others:
        common_seeds = set(baseline.seeds) & set(other.seeds)
        if not common_seeds:
            raise ReportError(f"'{baseline.name}' (seeds {_seeds(baseline.seeds)}) and '{other.name}' (seeds "
                              f"{_seeds(other.seeds)}) have no seed in common, so no pair to compare; run the same "
                              "seeds of both")
        mine = _cells_of(rows, other)
        keys = [k for k in base if k in mine]
        if not keys:
            raise ReportError(f"'{baseline.name}' ({_cells(base)}) and '{other.name}' ({_cells(mine)}) share no metric "
                              "of the same predict key")
        out.append((other, keys))
    return out


def _seeds(seeds) -> str:
    return ",".join(map(str, sorted(seeds))) or "none"


def _cells(cells) -> str:
    return ", ".join(f"{m} of {k}" for m, k in cells) or "no value of the metrics asked for"


def compare(rows: Sequence[Row], baseline: Group, others: Sequence[Group]) -> list[Comparison]:
    """Every other config minus ``baseline`` on each (metric, key) both have, paired on seeds."""
    base = _cells_of(rows, baseline)
    out = []
    for other, keys in check_pairs(rows, baseline, others):
        mine = _cells_of(rows, other)
        for metric, key in keys:
            out.append(Comparison(baseline, other, metric, key,
                                  paired(base[(metric, key)].result.by_seed, mine[(metric, key)].result.by_seed)))
    return out


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def render_comparisons(sections: Sequence[tuple[str, Sequence[Comparison]]], fmt: str) -> str:
    """One table of comparisons; ``sections`` are (epoch label, comparisons) pairs, an ``epoch`` column when there
    are several (``--epochs last,best``)."""
    from peerkd.experiments.render import _num, plain_table

    baseline = sections[0][1][0].baseline
    several = len(sections) > 1
    header = [*(["epoch"] if several else []), "config (B)", "metric", "key", "pairs", f"mean A ({baseline.name})",
              "mean B", "B - A", "95 % CI of B - A", "Wilcoxon p", "t-test p", "unpaired seeds"]
    body, others = [], []
    for label, comparisons in sections:
        for c in comparisons:
            r, m = c.result, c.metric
            unpaired = "; ".join(part for part in (f"A only: {_seeds(r.only_a)}" if r.only_a else "",
                                                   f"B only: {_seeds(r.only_b)}" if r.only_b else "") if part)
            ci = "—" if r.ci is None else f"[{_num(r.ci[0], m, True)}, {_num(r.ci[1], m, True)}]"
            body.append([*([label] if several else []), c.other.name, m, c.key, str(r.n), _num(sum(r.a) / r.n, m),
                         _num(sum(r.b) / r.n, m), _num(r.mean_difference, m, True), ci, _p(r.wilcoxon_p), _p(r.t_p),
                         unpaired or "none"])
            if all(g is not c.other for g in others):
                others.append(c.other)
    notes = [f"'{other.name}' differs from the baseline in {', '.join(differs)}: its pairs share the seed, not the "
             "data order" for other in others if (differs := data_differences(baseline, other))]
    epochs = " and ".join(label for label, _ in sections)
    note = (f"Paired comparison against '{baseline.name}' (A), {epochs}: B - A per seed on the seeds both have "
            f"(same seed; same data order where the data keys agree), means of A and B over those seeds, the mean of "
            f"the differences, {CI_METHOD}; "
            "two-sided p-values of the Wilcoxon signed-rank test and the paired t-test (— below 2 pairs or with "
            "every difference 0); unpaired seeds enter nothing." + "".join(f" {n}." for n in notes))
    return plain_table(header, body, fmt, note)


# ---------------------------------------------------------------------------------------------------- ranking

@dataclasses.dataclass
class RankedCell:
    metric: str
    key: str
    ranking: Ranking | None
    left_out: list[str]  # configs without this (metric, key)
    why_not: str = ""  # why no ranking was made, when ranking is None


def check_rank(rows: Sequence[Row], groups: Sequence[Group]) -> list[tuple[str, str]]:
    """The (metric, key) cells to rank: those with a direction that at least 3 configs have. ReportError when
    there are fewer than 3 configs or no such cell."""
    if len(groups) < 3:
        raise ReportError(f"--rank needs at least 3 configs, these runs hold {len(groups)} ({_names(groups)}); "
                          "set two side by side with --compare A B")
    cells = list(dict.fromkeys((r.metric, r.key) for r in rows if r.result.values))
    no_direction = sorted({m for m, _ in cells if m not in HIGHER_IS_BETTER})
    cells = [c for c in cells if c[0] in HIGHER_IS_BETTER
             and sum(1 for g in groups if c in _cells_of(rows, g)) >= 3]
    if not cells:
        raise ReportError("--rank: no metric with a better direction that 3 configs share on the same predict key"
                          + (f" ({', '.join(no_direction)} have no direction)" if no_direction else ""))
    return cells


def rankings(rows: Sequence[Row], groups: Sequence[Group]) -> list[RankedCell]:
    out = []
    for metric, key in check_rank(rows, groups):
        values = {g.name: _cells_of(rows, g)[(metric, key)].result.by_seed for g in groups
                  if (metric, key) in _cells_of(rows, g)}
        left_out = [g.name for g in groups if g.name not in values]
        try:
            out.append(RankedCell(metric, key, rank(values, HIGHER_IS_BETTER[metric]), left_out))
        except ValueError as err:
            out.append(RankedCell(metric, key, None, left_out, str(err)))
    return out


def render_rankings(sections: Sequence[tuple[str, Sequence[RankedCell]]], fmt: str) -> str:
    """Each ranked cell as a note and a table (markdown, LaTeX); CSV: one table of every ranking, a row per config
    with its ranking's Friedman p and critical difference."""
    from peerkd.experiments.render import _num, plain_table

    parts, flat = [], []
    for label, ranked in sections:
        for cell in ranked:
            title = f"Ranking by {cell.metric} of {cell.key} ({label})"
            left = (f"; not ranked (no {cell.metric} of {cell.key}): {', '.join(cell.left_out)}"
                    if cell.left_out else "")
            if cell.ranking is None:
                parts.append(f"{title}: not ranked: {cell.why_not}{left}.\n")
                continue
            r = cell.ranking
            friedman = ("every config scores alike in every seed" if r.friedman_p is None else
                        f"Friedman chi2 = {r.friedman_statistic:.3f}, p = {_p(r.friedman_p)}")
            note = (f"{title}: {len(r.names)} configs x {len(r.seeds)} seeds ({_seeds(r.seeds)}) as blocks, rank 1 "
                    f"= {'highest' if HIGHER_IS_BETTER[cell.metric] else 'lowest'}; {friedman}; Nemenyi critical "
                    f"difference {r.critical_difference:.3f} at alpha = {1 - CONFIDENCE:.2f}{left}.")
            body = [[str(i + 1), name, f"{mean_rank:.3f}", _num(mean, cell.metric), ", ".join(r.tied_with(i)) or "none"]
                    for i, (name, mean_rank, mean) in enumerate(zip(r.names, r.mean_ranks, r.means))]
            flat += [[label, cell.metric, cell.key, *b, str(len(r.seeds)), _p(r.friedman_p),
                      f"{r.critical_difference:.3f}"] for b in body]
            parts.append(plain_table(["#", "config", "mean rank", f"mean {cell.metric}",
                                      "not told apart from (Nemenyi)"], body, fmt, note))
    if fmt == "csv":
        return plain_table(["epoch", "metric", "key", "#", "config", "mean rank", "mean", "not told apart from",
                            "seeds", "friedman p", "critical difference"], flat, fmt, "")
    return "\n".join(parts)


def cd_plots(ranked: Sequence[RankedCell], path: str | Path, epoch_label: str) -> list[Path]:
    """One critical-difference diagram per ranked cell: ``path`` for one, ``<stem>_<metric>_<key>.png`` for more."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError("--cd-plot needs matplotlib: pip install 'peerkd[plot]'") from None
    from peerkd.experiments.statistics import cd_plot

    path = Path(path)
    drawn = [c for c in ranked if c.ranking is not None]
    def where(cell: RankedCell) -> Path:
        if len(drawn) == 1:
            return path
        stem = re.sub(r"[^\w.-]", "_", f"{path.stem}_{cell.metric}_{cell.key}")  # a key may hold ':' and ','
        return path.with_name(stem + (path.suffix or ".png"))

    return [cd_plot(c.ranking, where(c), f"{c.metric} of {c.key}, {epoch_label}") for c in drawn]
