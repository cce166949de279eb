"""peerkd report on run folders written by hand: the protocol's aggregate (mean / sample std / median) computed here
from the numbers, the verdicts, last vs best, metric conversions, the table layout, formats, bad input."""
import csv
import io
import json
import statistics

import pytest
import yaml

from peerkd.cli import main

PAPER = {"id": "001", "table": "2", "mean_of": 3,
         "cells": [{"row": "ONE", "column": "ResNet-32", "metric": "error", "value": 24.0, "std": 0.4,
                    "predict": "net1"},
                   {"row": "ONE", "column": "ResNet-110", "metric": "top1", "value": 80.0, "predict": "net1"},
                   {"row": "ONE", "column": "agree", "metric": "agreement", "value": 0.5, "predict": "branches"}]}


def make_run(folder, name, seed, last_top1, best_top1=None, paper=PAPER, method="one", epochs=2, **extra):
    folder.mkdir(parents=True)
    config = {"name": name, "seed": seed, "method": {"name": method}, "schedule": {"epochs": epochs},
              "trainer": {"device": f"cuda:{seed}"}, "paper": paper, **extra}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    best = best_top1 if best_top1 is not None else last_top1
    summary = {"name": name, "method": method, "epochs": epochs, "keys": {
        "net1": {"last": {"top1": last_top1, "top5": 90.0, "nll": 1.0, "ece": 5.0, "aurc": 60.0, "eaurc": 9.0},
                 "best": {"top1": best, "top5": 91.0, "nll": 0.9, "ece": 4.0, "aurc": 50.0, "eaurc": 8.0,
                          "epoch": 0}}},
        "diversity": {"branches": 0.3, "branches_agreement": 0.4 + seed / 100}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "environment.json").write_text(json.dumps({
        "git_sha": "abcdef0123456789", "git_dirty": False,
        "argv": ["/x/peerkd/__main__.py", "train", "-c", f"configs/{name}.yaml", "--set", "schedule.epochs=2",
                 "--set", f"seed={seed}", "--out", str(folder)]}))


def report(capsys, *argv):
    code = main(["report", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def three_seeds(tmp_path):
    runs = tmp_path / "runs"
    tops = {0: 70.0, 1: 71.5, 2: 73.0}
    for seed, top1 in tops.items():
        make_run(runs / f"one-s{seed}", "one", seed, top1, best_top1=top1 + 2.0)
    return runs, tops


def test_mean_and_sample_std_over_seeds_of_the_last_epoch(capsys, three_seeds):
    runs, tops = three_seeds
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0, err
    rows = {r["column"]: r for r in csv_rows(out)}
    errors = [100.0 - t for t in tops.values()]
    mean, std = sum(errors) / 3, (sum((e - sum(errors) / 3) ** 2 for e in errors) / 2) ** 0.5  # n - 1
    assert (mean, std) == pytest.approx((28.5, 1.5))
    assert rows["ResNet-32"]["ours"] == f"{mean:.2f} ± {std:.2f}"
    assert rows["ResNet-32"]["paper value"] == "24.00 ± 0.40"
    assert rows["ResNet-32"]["difference"] == f"{mean - 24.0:+.2f}"
    assert rows["ResNet-32"]["verdict"] == "off"  # 4.5 away: beyond the paper's 0.4 and 2 x 1.5
    assert rows["ResNet-110"]["ours"] == "71.50 ± 1.50" and rows["ResNet-110"]["verdict"] == "off"
    agreement = [0.40, 0.41, 0.42]
    assert rows["agree"]["ours"] == f"{sum(agreement) / 3:.4f} ± {statistics.stdev(agreement):.4f}"
    assert rows["ResNet-32"]["seeds"] == "3" and rows["ResNet-32"]["epoch"] == "last"
    assert rows["ResNet-32"]["commit"] == "abcdef0"
    assert rows["ResNet-32"]["command"] == f"peerkd sweep configs/one.yaml --seeds 0,1,2 --set schedule.epochs=2 " \
                                           f"--out {runs}"


def test_best_is_read_only_when_asked_and_labelled(capsys, three_seeds):
    runs, _ = three_seeds
    code, out, _ = report(capsys, runs, "--best", "--metric", "top1")
    assert code == 0
    assert "73.50 ± 1.50" in out and "71.50" not in out  # best = last + 2 in every seed
    assert "chosen on the test set" in out
    code, out, _ = report(capsys, runs, "--metric", "top1")
    assert "71.50 ± 1.50" in out and "last epoch" in out and "chosen on the test set" not in out


def test_verdicts_and_the_median_protocol(capsys, tmp_path):
    runs = tmp_path / "runs"
    within_paper = dict(PAPER, cells=[dict(PAPER["cells"][1], value=71.2, std=0.5)])
    for seed, top1 in enumerate((70.0, 71.5, 73.0)):
        make_run(runs / f"a-s{seed}", "a", seed, top1, paper=within_paper)
    within_two = dict(PAPER, cells=[dict(PAPER["cells"][1], row="B", value=74.0, std=None)])
    for seed, top1 in enumerate((70.0, 71.5, 73.0)):  # |71.5 - 74| = 2.5 <= 2 x 1.5
        make_run(runs / f"b-s{seed}", "b", seed, top1, paper=within_two)
    too_few = dict(PAPER, cells=[dict(PAPER["cells"][1], row="C")])
    for seed in (0, 1):
        make_run(runs / f"c-s{seed}", "c", seed, 80.0, paper=too_few)
    median = dict(PAPER, mean_of=0, median_of=5, cells=[dict(PAPER["cells"][1], row="D", value=15.0)])
    values = [30.0, 10.0, 20.0, 11.0, 15.0]
    for seed, top1 in enumerate(values):
        make_run(runs / f"d-s{seed}", "d", seed, top1, paper=median)
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0, err
    rows = {r["row"]: r for r in csv_rows(out)}
    assert rows["ONE"]["verdict"] == "within the paper's ±"
    assert rows["B"]["verdict"] == "within 2 std"
    assert rows["C"]["verdict"] == "not enough seeds (2 of 3)"
    assert rows["D"]["ours"] == f"{statistics.median(values):.2f} ± {statistics.stdev(values):.2f}"
    assert rows["D"]["ours"].startswith("15.00") and rows["D"]["verdict"] == "within 2 std"  # the paper gives no ±
    assert rows["D"]["seeds"] == "5"


def test_runs_are_grouped_by_config_not_by_name(capsys, tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):  # the seed and the device differ (placement): one group
        make_run(runs / f"x-s{seed}", "x", seed, 70.0 + seed)
    make_run(runs / "x-long-s0", "x", 0, 90.0, epochs=4)  # same name, another config: its own group
    code, out, err = report(capsys, runs, "--format", "csv", "--metric", "top1")
    assert code == 0, err
    rows = csv_rows(out)
    assert sorted(r["seeds"] for r in rows) == ["1", "3"]
    assert {r["ours"] for r in rows} == {"71.00 ± 1.00", "90.00"}


def test_the_grouping_ignores_the_seed_and_the_placement_keys_only():
    from peerkd.config import Config
    from peerkd.experiments.aggregate import PLACEMENT_KEYS, group_key

    assert set(PLACEMENT_KEYS) == {"seed", "data.root", "data.download", "data.workers", "trainer.device",
                                   "trainer.progress", "trainer.threads", "trainer.out", "trainer.log_every",
                                   "trainer.loggers", "trainer.loggers_required", "trainer.tracker_project"}
    base = Config().to_dict()

    def changed(key, value):
        tree = json.loads(json.dumps(base))
        node = tree
        *sections, last = key.split(".")
        for part in sections:
            node = node[part]
        node[last] = value
        return group_key(tree)

    assert changed("data.root", "/elsewhere") == changed("trainer.threads", 3) == changed("seed", 7) == \
        changed("trainer.loggers", ["jsonl", "wandb"]) == group_key(base)
    for key, value in (("optim.lr", 0.2), ("trainer.precision", "fp32"), ("schedule.epochs", 30)):
        assert changed(key, value) != group_key(base), key  # resumable, yet another computation: another group


def test_whole_paper_table_as_rows_by_columns(capsys, tmp_path, three_seeds):
    runs, _ = three_seeds
    other = dict(PAPER, cells=[dict(c, row="OKDDip") for c in PAPER["cells"][:2]])
    for seed in (0, 1, 2):
        make_run(runs / f"okddip-s{seed}", "okddip", seed, 75.0, paper=other)
    code, out, err = report(capsys, runs, "--table", "001:2")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[1:-1] == [" paper 001 table 2 ", " ResNet-32 (error) ", " ResNet-110 (top1) ",
                                         " agree (agreement) "]
    one = next(line for line in lines if line.startswith("| ONE |"))
    assert "28.50 ± 1.50 [27.00, 30.00] (24.00) ✗ n=3" in one  # BCa over 3 evenly spaced seeds: their range
    okddip = next(line for line in lines if line.startswith("| OKDDip |"))
    assert "25.00 ± 0.00 [25.00, 25.00] (24.00)" in okddip and okddip.endswith("|  |")  # no agreement cell here
    code, _, err = report(capsys, runs, "--table", "004:1")
    assert code == 2 and "tables present: 001:2" in err and len(err.strip().splitlines()) == 1


def test_latex_and_markdown_formats(capsys, three_seeds):
    runs, _ = three_seeds
    code, out, _ = report(capsys, runs, "--format", "latex")
    assert code == 0 and r"\begin{tabular}" in out and r"28.50 $\pm$ 1.50" in out
    code, out, _ = report(capsys, runs)
    assert "| 001 | 2 | ONE | ResNet-32 | error | net1 | 24.00 ± 0.40 | 28.50 ± 1.50 | [" in out
    assert "] | +4.50 | off | 3 | ? | ? | ? | auto | ? | abcdef0 | [1] |" in out  # CI; unrecorded setup: ?
    assert "[1] `peerkd sweep configs/one.yaml" in out


def test_foreign_and_broken_folders_are_skipped_with_a_warning(capsys, tmp_path, three_seeds):
    runs, _ = three_seeds
    (runs / "notes").mkdir()
    (runs / "notes" / "todo.txt").write_text("x")
    (runs / ".submitit").mkdir()  # hidden: passed over silently
    broken = runs / "broken-s0"
    broken.mkdir()
    (broken / "config.yaml").write_text("name: [unclosed")
    (broken / "summary.json").write_text("{}")
    unfinished = runs / "one-s3"
    make_run(unfinished, "one", 3, 50.0)
    (unfinished / "summary.json").unlink()
    (unfinished / "checkpoint.pt").write_bytes(b"")
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0 and len(csv_rows(out)) == 3
    warnings = err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("peerkd report: skipped ") for w in warnings)
    assert any("notes: not a run folder" in w for w in warnings)
    assert any("broken-s0: broken: config.yaml unreadable" in w for w in warnings)
    assert any("one-s3: unfinished: no summary.json" in w for w in warnings)


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    code, out, err = report(capsys, tmp_path / "nowhere")
    assert code == 2 and out == "" and err.count("\n") == 1 and "does not exist" in err
    only_foreign = tmp_path / "foreign"
    (only_foreign / "a").mkdir(parents=True)
    code, _, err = report(capsys, only_foreign)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("peerkd: report error: no finished run folder") and len(lines) == 2
    bad_paper = tmp_path / "bad"
    make_run(bad_paper / "r-s0", "r", 0, 50.0, paper={"id": "009", "table": "1", "cells": []})
    code, _, err = report(capsys, bad_paper)
    assert code == 2 and "invalid paper block" in err and "Traceback" not in err


def test_the_report_never_builds_a_method(capsys, tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "r-s0", "r", 0, 50.0, method="a_method_no_registry_knows", paper=None)
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0, err
    (row,) = csv_rows(out)
    assert row["row"] == "r" and row["key"] == "net1" and row["ours"] == "50.00"
    assert row["verdict"] == "no paper value"


def test_into_a_markdown_file_keeps_the_rest_and_refresh_reruns_it(capsys, tmp_path, three_seeds):
    runs, _ = three_seeds
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nhand-written text\n")
    assert report(capsys, runs, "--table", "001:2", "--into", results)[0] == 0
    first = results.read_text()
    assert first.startswith("# Results\n\nhand-written text\n")
    assert f"<!-- peerkd report begin: peerkd report {runs} --table 001:2 -->" in first
    make_run(runs / "one-s3", "one", 3, 71.5)  # a fourth seed: the mean stays 71.5, the std changes
    results.write_text(first + "\nmore text after\n")
    code, _, err = report(capsys, "--refresh", results)
    assert code == 0, err
    second = results.read_text()
    assert second.count("<!-- peerkd report begin:") == 1 and second.endswith("more text after\n")
    assert "n=4" in second and "n=3" not in second


def test_plot_writes_one_png_per_table(capsys, tmp_path, three_seeds):
    pytest.importorskip("matplotlib")
    runs, _ = three_seeds
    png = tmp_path / "paper_vs_ours.png"
    code, _, err = report(capsys, runs, "--plot", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_mean_over_members_and_a_cell_of_another_table(capsys, tmp_path):
    """predict: mean:k1,k2 compares the paper's number with the mean of that metric over the keys (computed here),
    and a cell's own table overrides the block's."""
    paper = {"id": "000", "table": "1", "cells": [
        {"row": "CSS", "column": "R110", "metric": "top1", "value": 80.0, "predict": "mean:net1,net2", "table": "5"}]}
    run = tmp_path / "runs" / "css-s0"
    make_run(run, "css", 0, 70.0, paper=paper, method="css")
    summary = json.loads((run / "summary.json").read_text())
    summary["keys"]["net2"] = {"last": dict(summary["keys"]["net1"]["last"], top1=74.0), "best": None}
    (run / "summary.json").write_text(json.dumps(summary))
    code, out, _ = report(capsys, tmp_path / "runs", "--format", "csv")
    assert code == 0
    (row,) = csv_rows(out)
    assert float(row["ours"]) == pytest.approx((70.0 + 74.0) / 2) and row["table"] == "5"


def test_a_foundation_config_without_cells_reports_every_key(capsys, tmp_path):
    """paper: {id: foundation} (no cells) is reported like a config without a block: one row per predict key."""
    make_run(tmp_path / "runs" / "dml-s0", "dml", 0, 66.0, paper={"id": "foundation"}, method="dml")
    code, out, _ = report(capsys, tmp_path / "runs", "--format", "csv")
    assert code == 0
    (row,) = csv_rows(out)
    assert row["key"] == "net1" and float(row["ours"]) == 66.0 and row["verdict"] == "no paper value"


def test_a_run_trained_here_is_reported_from_its_stored_summary(capsys, tmp_path):
    """The files a training run writes today are what the report reads: a predict key's top-1 and a diversity
    group's agreement come out as summary.json holds them."""
    from tests.helpers import tiny_config
    from peerkd.training.trainer import train

    paper = {"id": "001", "table": "2", "cells": [
        {"row": "DML", "column": "top1", "metric": "top1", "value": 50.0, "predict": "peer0"},
        {"row": "DML", "column": "agree", "metric": "agreement", "value": 0.5, "predict": "peers"}]}
    run = tmp_path / "runs" / "dml-s0"
    summary = train(tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=1, train_size=128,
                                name="dml", paper=paper), run_dir=run)
    capsys.readouterr()  # the epoch lines of training
    code, out, _ = report(capsys, tmp_path / "runs", "--format", "csv")
    assert code == 0
    rows = {row["column"]: float(row["ours"]) for row in csv_rows(out)}
    assert rows["top1"] == pytest.approx(summary["keys"]["peer0"]["last"]["top1"], abs=0.01)
    assert rows["agree"] == pytest.approx(summary["diversity"]["peers_agreement"], abs=1e-4)
    with open(run / "config.yaml") as f:
        batch = yaml.safe_load(f)["data"]["batch_size"]
    code, out, _ = report(capsys, tmp_path / "runs", "--format", "csv")
    setup = csv_rows(out)[0]  # the reproducibility columns, as this run recorded them
    import torch
    assert (setup["device"], setup["devices"], setup["precision"], setup["torch"], setup["batch"]) == (
        "cpu", "1", "fp32", torch.__version__, str(batch))


def test_damaged_run_folders_are_each_skipped_in_one_line_and_the_rest_reported(capsys, tmp_path, three_seeds):
    runs, _ = three_seeds
    truncated = runs / "one-s3"
    make_run(truncated, "one", 3, 50.0)
    (truncated / "summary.json").write_text((truncated / "summary.json").read_text()[:40])  # cut mid-write
    no_config = runs / "one-s4"
    make_run(no_config, "one", 4, 50.0)
    (no_config / "config.yaml").unlink()
    other_version = runs / "one-s5"  # a checkpoint of another peerkd version, the run unfinished
    make_run(other_version, "one", 5, 50.0)
    (other_version / "summary.json").unlink()
    (other_version / "checkpoint.pt").write_bytes(b"PK\x03\x04 not this version's checkpoint")
    (runs / "stray.json").write_text("{}")  # a file, not a run folder: ignored
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0 and len(csv_rows(out)) == 3  # the three intact seeds, one cell each
    warnings = err.strip().splitlines()
    assert len(warnings) == 3 and "Traceback" not in err, err
    assert any("one-s3: broken: summary.json unreadable" in w for w in warnings)
    assert any("one-s4: broken: no config.yaml" in w for w in warnings)
    assert any("one-s5: unfinished: no summary.json" in w for w in warnings)
