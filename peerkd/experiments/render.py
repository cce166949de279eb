"""The printed forms of a ``peerkd report`` (:mod:`peerkd.experiments.aggregate` reads and aggregates the runs): the
flat list of cells as markdown, CSV or LaTeX, one paper table laid out as its rows x its columns, the paper-vs-ours
figure, and the generated block of a markdown file (RESULTS.md) that records the command that made it."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Sequence

from peerkd.experiments.aggregate import ReportError, Row

DECIMALS = {"nll": 3, "agreement": 4, "diversity": 4}  # digits printed per metric (others: 2)
BEST_LABEL = "best epoch by test top-1 (chosen on the test set)"
LAST_LABEL = "last epoch"
BEGIN, END = "<!-- peerkd report begin: ", "<!-- peerkd report end -->"  # the generated block of a markdown file


# ----------------------------------------------------------------------------------------------------- printing

def _num(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "—"
    digits = DECIMALS.get(metric, 2)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _with_std(value, std, metric) -> str:
    return _num(value, metric) + (f" ± {_num(std, metric)}" if std is not None and value is not None else "")


def _ci(result, metric: str) -> str:
    """The bootstrap interval of a cell's statistic over its seeds as ``[low, high]``, "—" when there is none."""
    from peerkd.experiments.statistics import StatisticsUnavailable, bootstrap_ci

    try:
        ci = bootstrap_ci(result.values, result.protocol)
    except StatisticsUnavailable:
        return "—"
    return "—" if ci is None else f"[{_num(ci[0], metric)}, {_num(ci[1], metric)}]"


def _cells(row: Row, best_row: Row | None = None) -> dict[str, str]:
    """A row's printed cells; with ``best_row`` (the same cell read at the best epoch) its ours and CI beside."""
    r = row.result
    cells = {"paper": row.paper_id, "table": row.table, "row": row.row, "column": row.column, "metric": row.metric,
             "key": row.key, "paper value": _with_std(r.paper, r.paper_std, row.metric),
             "ours": _with_std(r.ours, r.std, row.metric), "95 % CI": _ci(r, row.metric)}
    if best_row is not None:
        cells["ours (best epoch)"] = _with_std(best_row.result.ours, best_row.result.std, row.metric)
        cells["95 % CI (best epoch)"] = _ci(best_row.result, row.metric)
    cells.update({"difference": _num(r.difference, row.metric, True),
                  "verdict": r.verdict if not row.missing else f"{r.verdict}; key missing in {len(row.missing)} run(s)",
                  "seeds": str(r.n), **row.group.setup, "command": row.command})
    return cells


def _ci_note() -> str:
    from peerkd.experiments.statistics import CI_METHOD, StatisticsUnavailable, _scipy_stats

    try:
        _scipy_stats()
    except StatisticsUnavailable:
        return "no 95 % CI (scipy missing: pip install 'peerkd[stats]')"
    return CI_METHOD


def _protocol_note(rows: Sequence[Row], best: bool, both: bool = False) -> str:
    protocols = sorted({r.result.protocol for r in rows})
    how = " / ".join("median of seeds" if p == "median" else "mean ± sample std over seeds" for p in protocols)
    epochs = f"{LAST_LABEL} and the {BEST_LABEL} side by side" if both else (BEST_LABEL if best else LAST_LABEL)
    return f"ours: {how}, {epochs}; {_ci_note()}"


def render(rows: Sequence[Row], fmt: str = "md", best: bool = False, command: str | None = None,
           best_rows: Sequence[Row] | None = None) -> str:
    """The flat list of cells; ``best_rows`` (``--epochs last,best``: the same cells at the best epoch, in the order
    of ``rows``) adds the best epoch's columns beside the last epoch's."""
    pairs = list(zip(rows, best_rows)) if best_rows is not None else [(row, None) for row in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        fields = list(_cells(*pairs[0]))
        writer = csv.DictWriter(buffer, fieldnames=[*fields, "values", "epoch"], lineterminator="\n")
        writer.writeheader()
        for row, best_row in pairs:
            values = " ".join(_num(v, row.metric) for v in row.result.values)
            writer.writerow({**_cells(row, best_row), "values": values,
                             "epoch": "last,best" if best_row is not None else "best" if best else "last"})
        return buffer.getvalue()
    note = _protocol_note(rows, best, best_rows is not None)
    header = [h for h in _cells(*pairs[0]) if h != "command"] + ["cmd"]
    commands: list[str] = []
    body = []
    for row, best_row in pairs:
        cells = _cells(row, best_row)
        if cells["command"] not in commands:
            commands.append(cells["command"])
        cells["cmd"] = f"[{commands.index(cells['command']) + 1}]"
        body.append([cells[h] for h in header])
    if fmt == "latex":
        return _latex(header[:-1], [b[:-1] for b in body], note)
    lines = []
    if command:
        lines.append(f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}; {note}.")
    else:
        lines.append(f"{note[0].upper()}{note[1:]}.")
    lines += ["", markdown_table(header, body)]
    lines += [""] + [f"[{i}] `{cmd}`" for i, cmd in enumerate(commands, 1)]
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def plain_table(header: Sequence[str], body: Sequence[Sequence[str]], fmt: str, note: str) -> str:
    """A plain table with a note above it, as markdown, CSV (the note left out) or LaTeX."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return buffer.getvalue()
    if fmt == "latex":
        return _latex(list(header), [list(b) for b in body], note)
    return f"{note}\n\n{markdown_table(header, body)}\n"


def _latex(header, body, note) -> str:
    def tex(text: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("—", "--")):
            text = text.replace(a, b)
        return text

    lines = [f"% {note}", r"\begin{tabular}{" + "l" * len(header) + "}", r"\hline",
             " & ".join(map(tex, header)) + r" \\", r"\hline"]
    lines += [" & ".join(map(tex, cells)) + r" \\" for cells in body]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> tuple[str, str]:
    if ":" not in text:
        raise ReportError(f"--table '{text}': give PAPER:TABLE, e.g. 001:2")
    paper, table = text.split(":", 1)
    return paper, table


def table_layout(rows: Sequence[Row], which: str, fmt: str = "md", best: bool = False,
                 command: str | None = None, best_rows: Sequence[Row] | None = None) -> str:
    """One paper table as the paper lays it out: its rows x its columns, each cell ``ours ± std [95 % CI] (paper)
    verdict n=seeds``, and with ``best_rows`` (``--epochs last,best``) ``; best: ours ± std [CI]`` after it."""
    best_of = {id(r): b for r, b in zip(rows, best_rows)} if best_rows is not None else {}
    paper_id, table = parse_table(which)
    chosen = [r for r in rows if r.paper_id == paper_id and r.table == table]
    if not chosen:
        present = sorted({f"{r.paper_id}:{r.table}" for r in rows if r.paper_id})
        raise ReportError(f"--table {which}: no run of paper {paper_id} table {table} in these runs; tables present: "
                          f"{', '.join(present) or 'none (no run has a paper: block)'}")
    multi_metric = len({r.metric for r in chosen}) > 1
    label = lambda r: (r.column or r.metric) + (f" ({r.metric})" if multi_metric and r.column else "")  # noqa: E731
    columns = list(dict.fromkeys(label(r) for r in chosen))
    row_names = list(dict.fromkeys(r.row for r in chosen))
    grid: dict[tuple[str, str], str] = {}
    for r in chosen:
        mark = {"within the paper's ±": "✓", "within 2 std": "≈", "off": "✗"}.get(r.result.verdict, "?")
        grid[(r.row, label(r))] = (f"{_with_std(r.result.ours, r.result.std, r.metric)} {_ci(r.result, r.metric)} "
                                   f"({_num(r.result.paper, r.metric)}) {mark} n={r.result.n}")
        if id(r) in best_of:
            b = best_of[id(r)].result
            grid[(r.row, label(r))] += f"; best: {_with_std(b.ours, b.std, r.metric)} {_ci(b, r.metric)}"
    header = [f"paper {paper_id} table {table}", *columns]
    body = [[name, *(grid.get((name, c), "") for c in columns)] for name in row_names]
    note = (_protocol_note(chosen, best, bool(best_of)) + "; cell: ours [95 % CI] (paper) verdict, ✓ within the "
            "paper's ±, ≈ within 2 std, ✗ off, ? not enough seeds")
    if fmt != "md":
        return plain_table(header, body, fmt, note)
    lines = [f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}; {note}." if command else note + ".", "",
             markdown_table(header, body)]
    commands = list(dict.fromkeys(r.command for r in chosen))
    lines += [""] + [f"[{i}] `{cmd}`" for i, cmd in enumerate(commands, 1)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------- plot

def plot(rows: Sequence[Row], path: str | Path, best: bool = False) -> list[Path]:
    """One PNG per paper table: paper's values and ours with their error bars, one panel per metric. One table
    writes ``path``; several write ``<stem>_<paper>_<table>.png`` beside it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install 'peerkd[plot]'") from None
    tables = list(dict.fromkeys((r.paper_id, r.table) for r in rows if r.paper_id))
    if not tables:
        raise ReportError("--plot: no run has a paper: block, so there is nothing to set beside the paper")
    path = Path(path)
    written = []
    for paper_id, table in tables:
        chosen = [r for r in rows if (r.paper_id, r.table) == (paper_id, table) and r.result.paper is not None]
        metrics = list(dict.fromkeys(r.metric for r in chosen))
        fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.9 * len(chosen) + 2), 4.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            cells = [r for r in chosen if r.metric == metric]
            x = list(range(len(cells)))
            ax.errorbar([i - 0.12 for i in x], [r.result.paper for r in cells],
                        yerr=[r.result.paper_std or 0.0 for r in cells], fmt="o", capsize=3, label="paper")
            ax.errorbar([i + 0.12 for i in x], [r.result.ours if r.result.ours is not None else float("nan")
                                                for r in cells],
                        yerr=[r.result.std or 0.0 for r in cells], fmt="s", capsize=3,
                        label=f"ours (n={'/'.join(sorted({str(r.result.n) for r in cells}))})")
            ax.set_xticks(x)
            ax.set_xticklabels([" / ".join(filter(None, (r.row, r.column))) for r in cells], rotation=30,
                               ha="right", fontsize=8)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"paper {paper_id} table {table}: paper vs ours ({BEST_LABEL if best else LAST_LABEL})",
                     fontsize=10)
        fig.tight_layout()
        out = path if len(tables) == 1 else path.with_name(f"{path.stem}_{paper_id}_{table}{path.suffix or '.png'}")
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written


# ------------------------------------------------------------------------------------------- markdown splicing

def splice(path: Path, command: str, text: str) -> None:
    """Put ``text`` into the markdown file ``path`` between the markers recorded with ``command``: the block made
    by the same command is replaced, any other text stays; a new command's block is appended."""
    begin = f"{BEGIN}{command} -->"
    old = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text.rstrip()}\n{END}"
    if begin in old:
        head, rest = old.split(begin, 1)
        if END not in rest:
            raise ReportError(f"{path}: the block of `{command}` has no end marker '{END}'; add it, then run again")
        tail = rest.split(END, 1)[1]
        new = head + block + tail
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + block + "\n"
    path.write_text(new)


def recorded_commands(path: Path) -> list[str]:
    """The report commands whose blocks a markdown file holds, in order."""
    text = path.read_text()
    return [part.split(" -->", 1)[0] for part in text.split(BEGIN)[1:]]
