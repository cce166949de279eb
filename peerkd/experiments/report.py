"""``peerkd report RUNS_DIR...``: the command. :mod:`peerkd.experiments.aggregate` reads the run folders and
aggregates them per paper cell, :mod:`peerkd.experiments.render` prints the result (a table, a paper table, the
figure, or the generated block of a markdown file that records the command, refreshed with ``--refresh``);
``--compare`` / ``--baseline`` / ``--rank`` print configs set against each other instead
(:mod:`peerkd.experiments.compare`, statistics in :mod:`peerkd.experiments.statistics`)."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from peerkd.config import PAPER_METRICS
from peerkd.experiments.aggregate import ReportError, group_runs, read_runs, rows_of

EPOCH_CHOICES = ["last", "best", "last,best"]


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUNS_DIR", help="folders holding run folders (or run folders)")
    parser.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    parser.add_argument("--metric", action="append", default=[], choices=PAPER_METRICS,
                        help="report only cells of this metric (repeatable); for runs without a paper: block, the "
                             "metrics to show (default top1)")
    parser.add_argument("--table", metavar="PAPER:TABLE", help="lay out one paper table, e.g. 001:2")
    parser.add_argument("--best", action="store_true",
                        help="read the epoch of the best test top-1 instead of the last (chosen on the test set); "
                             "the same as --epochs best")
    parser.add_argument("--epochs", choices=EPOCH_CHOICES, default=None,
                        help="which epoch: last (the default), best (by test top-1, chosen on the test set), or "
                             "last,best side by side")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="B - A per metric on matched seeds: paired difference, bootstrap CI, Wilcoxon and "
                             "t-test (A, B: config names or folders of one config's runs)")
    parser.add_argument("--baseline", metavar="CONFIG", help="every other config minus CONFIG, as --compare")
    parser.add_argument("--rank", action="store_true",
                        help="rank 3 or more configs over their common seeds: Friedman test, Nemenyi post-hoc")
    parser.add_argument("--cd-plot", metavar="FILE.png", help="with --rank: draw the critical-difference diagram")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw paper vs ours, one figure per table")
    parser.add_argument("--into", metavar="FILE.md", help="write the (markdown) report into FILE between markers "
                                                          "that record this command, keeping the rest of the file")
    parser.add_argument("--refresh", metavar="FILE.md", help="re-run every report command recorded in FILE and "
                                                             "replace its block")


def command_line(args) -> str:
    """The report command as it would be typed again (the options that change the output, not --into)."""
    words = ["peerkd", "report", *args.runs]
    if args.format != "md":
        words += ["--format", args.format]
    for metric in args.metric:
        words += ["--metric", metric]
    if args.table:
        words += ["--table", args.table]
    if args.best:
        words.append("--best")
    if args.epochs:
        words += ["--epochs", args.epochs]
    if args.compare:
        words += ["--compare", *args.compare]
    if args.baseline:
        words += ["--baseline", args.baseline]
    if args.rank:
        words.append("--rank")
    return " ".join(map(shlex.quote, words))


def epochs_of(args) -> list[str]:
    """The epochs to read, in order: ``--epochs`` split, or ``--best`` alone, or the last."""
    if args.best and args.epochs and args.epochs != "best":
        raise ReportError(f"--best and --epochs {args.epochs} disagree; give one of them")
    return (args.epochs or ("best" if args.best else "last")).split(",")


def check_options(args) -> None:
    chosen = [o for o, on in (("--compare", args.compare), ("--baseline", args.baseline),
                              ("--rank", args.rank or args.cd_plot), ("--table", args.table)) if on]
    if len(chosen) > 1:
        raise ReportError(f"{' and '.join(chosen)} print different reports; give one of them")


def _roots(args) -> list[str]:
    """RUNS_DIRs and the folders --compare / --baseline name outside them (read as well)."""
    roots = list(args.runs)
    for spec in [*(args.compare or []), *([args.baseline] if args.baseline else [])]:
        where = Path(spec)
        if where.is_dir() and not any(Path(r).resolve() == where.resolve() or Path(r).resolve() in
                                      where.resolve().parents for r in roots):
            roots.append(spec)
    return roots


def make(args, command: str | None = None) -> str:
    from peerkd.experiments.render import BEST_LABEL, LAST_LABEL, plot, render, table_layout

    check_options(args)
    epochs = epochs_of(args)
    groups = group_runs(read_runs(_roots(args)))
    rows_at = {epoch: rows_of(groups, args.metric, epoch == "best") for epoch in epochs}
    rows = rows_at[epochs[0]]
    for metric in args.metric:
        if not any(r.metric == metric and r.result.values for r in rows):
            present = sorted({r.metric for r in rows_of(groups, PAPER_METRICS) if r.result.values})
            raise ReportError(f"--metric {metric}: no run has it (metrics with values here: "
                              f"{', '.join(present) or 'none'})")
    if not rows:
        raise ReportError("no cell to report: these runs' summaries hold no predict key")
    best_rows = rows_at.get("best") if len(epochs) > 1 else None
    label = {"last": LAST_LABEL, "best": BEST_LABEL}
    head = f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}.\n\n" if command and args.format == "md" else ""
    if args.compare or args.baseline:
        from peerkd.experiments.compare import check_pairs, compare, find_group, render_comparisons

        if args.compare:
            baseline, others = find_group(args.compare[0], groups), [find_group(args.compare[1], groups)]
        else:
            baseline = find_group(args.baseline, groups)
            others = [g for g in groups if g is not baseline]
        check_pairs(rows, baseline, others)  # every bad input before any statistic
        return head + render_comparisons([(label[e], compare(rows_at[e], baseline, others)) for e in epochs],
                                          args.format)
    if args.rank or args.cd_plot:
        from peerkd.experiments.compare import cd_plots, check_rank, rankings, render_rankings

        check_rank(rows, groups)
        sections = []
        for epoch in epochs:
            ranked = rankings(rows_at[epoch], groups)
            if args.cd_plot:
                where = Path(args.cd_plot)
                if len(epochs) > 1:
                    where = where.with_name(f"{where.stem}_{epoch}{where.suffix or '.png'}")
                for png in cd_plots(ranked, where, label[epoch]):
                    print(f"peerkd report: wrote {png}", file=sys.stderr)
            sections.append((label[epoch], ranked))
        return head + render_rankings(sections, args.format)
    if args.plot:
        for png in plot(rows, args.plot, epochs[0] == "best"):
            print(f"peerkd report: wrote {png}", file=sys.stderr)
    if args.table:
        return table_layout(rows, args.table, args.format, epochs[0] == "best", command, best_rows)
    return render(rows, args.format, epochs[0] == "best", command, best_rows)


def main(args) -> int:
    from peerkd.experiments.render import splice

    if args.refresh:
        return refresh(Path(args.refresh))
    if not args.runs:
        raise ReportError("give at least one RUNS_DIR (or --refresh FILE.md)")
    if args.into:
        if args.format != "md":
            raise ReportError("--into writes markdown: drop --format")
        command = command_line(args)
        splice(Path(args.into), command, make(args, command))
        print(f"peerkd report: wrote the block of `{command}` into {args.into}", file=sys.stderr)
        return 0
    sys.stdout.write(make(args))
    return 0


def refresh(path: Path) -> int:
    import argparse

    from peerkd.experiments.render import BEGIN, recorded_commands, splice

    if not path.is_file():
        raise ReportError(f"--refresh: {path} does not exist")
    commands = recorded_commands(path)
    if not commands:
        raise ReportError(f"--refresh: {path} holds no '{BEGIN}...' block; make one with peerkd report ... --into")
    for command in commands:
        words = shlex.split(command)
        if words[:2] != ["peerkd", "report"]:
            raise ReportError(f"--refresh: {path} records `{command}`, not a peerkd report command")
        parser = argparse.ArgumentParser(prog="peerkd report")
        add_arguments(parser)
        args = parser.parse_args(words[2:])
        splice(path, command, make(args, command))
        print(f"peerkd report: refreshed the block of `{command}` in {path}", file=sys.stderr)
    return 0
