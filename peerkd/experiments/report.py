"""``peerkd report RUNS_DIR...``: the command. :mod:`peerkd.experiments.aggregate` reads the run folders and
aggregates them per paper cell, :mod:`peerkd.experiments.render` prints the result (a table, a paper table, the
figure, or the generated block of a markdown file that records the command, refreshed with ``--refresh``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from peerkd.config import PAPER_METRICS
from peerkd.experiments.aggregate import ReportError, group_runs, read_runs, rows_of


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUNS_DIR", help="folders holding run folders (or run folders)")
    parser.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    parser.add_argument("--metric", action="append", default=[], choices=PAPER_METRICS,
                        help="report only cells of this metric (repeatable); for runs without a paper: block, the "
                             "metrics to show (default top1)")
    parser.add_argument("--table", metavar="PAPER:TABLE", help="lay out one paper table, e.g. 001:2")
    parser.add_argument("--best", action="store_true",
                        help="read the epoch of the best test top-1 instead of the last (chosen on the test set)")
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
    return " ".join(map(shlex.quote, words))


def make(args, command: str | None = None) -> str:
    from peerkd.experiments.render import plot, render, table_layout

    groups = group_runs(read_runs(args.runs))
    rows = rows_of(groups, args.metric, args.best)
    if not rows:
        raise ReportError(f"no cell of metric {', '.join(args.metric)} in these runs")
    if args.plot:
        for png in plot(rows, args.plot, args.best):
            print(f"peerkd report: wrote {png}", file=sys.stderr)
    if args.table:
        return table_layout(rows, args.table, args.format, args.best, command)
    return render(rows, args.format, args.best, command)


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
