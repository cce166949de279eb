"""peerkd report's statistics on run folders written by hand: every interval and p-value is recomputed here from the
same numbers by calling scipy directly (or taken from a textbook table), and compared with what the report prints:
the bootstrap CI of a cell, --epochs last,best, --compare / --baseline (paired on seeds, unpaired listed), --rank
(Friedman, Nemenyi, the CD plot), the reproducibility columns, and bad input (one line, exit 2, nothing computed)."""
import inspect
import json
import math

import numpy as np
import pytest
import scipy.stats

from tests.experiments.test_report import csv_rows, make_run, report

RESAMPLES, SEED = 9999, 0  # the protocol the report states (peerkd/experiments/statistics.py)


def scipy_ci(values, statistic=np.mean):
    seeded = {"rng": SEED} if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else {"random_state": SEED}
    result = scipy.stats.bootstrap((np.asarray(values, float),), statistic, n_resamples=RESAMPLES,
                                   confidence_level=0.95, method="BCa", **seeded)
    return result.confidence_interval.low, result.confidence_interval.high


def runs_of(root, name, tops, best=None, **extra):
    """One config's runs, seed -> last top-1 (best top-1 = last + ``best`` when given)."""
    for seed, top1 in tops.items():
        make_run(root / f"{name}-s{seed}", name, seed, top1, paper=None,
                 best_top1=None if best is None else top1 + best, **extra)


A = {0: 70.0, 1: 71.0, 2: 72.5, 3: 71.4}
B = {0: 71.2, 1: 72.5, 2: 73.0, 3: 72.0, 7: 60.0}  # seed 7: B only, never paired


def test_each_cell_has_the_bootstrap_ci_of_its_mean_and_none_below_three_seeds(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs_of(runs, "a", A)
    runs_of(runs, "two", {0: 70.0, 1: 72.0})
    runs_of(runs, "same", {0: 65.0, 1: 65.0, 2: 65.0})
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0, err
    rows = {r["row"]: r for r in csv_rows(out)}
    low, high = scipy_ci(list(A.values()))
    assert low < np.mean(list(A.values())) < high
    assert rows["a"]["95 % CI"] == f"[{low:.2f}, {high:.2f}]"
    assert rows["two"]["95 % CI"] == "—"  # 2 seeds: no interval
    assert rows["same"]["95 % CI"] == "[65.00, 65.00]"  # every seed agrees: the point
    code, out, _ = report(capsys, runs)
    assert "BCa bootstrap over seeds, 9999 resamples, seed 0; none below 3 seeds" in out


def test_a_median_protocol_gets_the_ci_of_the_median(capsys, tmp_path):
    paper = {"id": "001", "table": "2", "median_of": 5,
             "cells": [{"row": "D", "column": "c", "metric": "top1", "value": 15.0, "predict": "net1"}]}
    values = [30.0, 10.0, 20.0, 11.0, 15.0]
    for seed, top1 in enumerate(values):
        make_run(tmp_path / "runs" / f"d-s{seed}", "d", seed, top1, paper=paper)
    code, out, _ = report(capsys, tmp_path / "runs", "--format", "csv")
    low, high = scipy_ci(values, np.median)
    assert code == 0 and csv_rows(out)[0]["95 % CI"] == f"[{low:.2f}, {high:.2f}]"


def test_last_and_best_epochs_side_by_side_best_labelled(capsys, tmp_path):
    runs_of(tmp_path / "runs", "a", A, best=2.0)
    code, out, err = report(capsys, tmp_path / "runs", "--format", "csv", "--epochs", "last,best")
    assert code == 0, err
    (row,) = csv_rows(out)
    mean = np.mean(list(A.values()))
    assert row["ours"].startswith(f"{mean:.2f} ± ") and row["ours (best epoch)"].startswith(f"{mean + 2:.2f} ± ")
    low, high = scipy_ci([v + 2.0 for v in A.values()])
    assert row["95 % CI (best epoch)"] == f"[{low:.2f}, {high:.2f}]" and row["epoch"] == "last,best"
    code, out, _ = report(capsys, tmp_path / "runs", "--epochs", "last,best")
    assert "last epoch and the best epoch by test top-1 (chosen on the test set) side by side" in out
    code, _, err = report(capsys, tmp_path / "runs", "--best", "--epochs", "last")
    assert code == 2 and "disagree" in err


def test_compare_pairs_matched_seeds_and_lists_the_unpaired(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs_of(runs, "a", A)
    runs_of(runs, "b", B)
    code, out, err = report(capsys, runs, "--compare", "a", "b", "--format", "csv")
    assert code == 0, err
    (row,) = csv_rows(out)
    seeds = [0, 1, 2, 3]  # seed 7 has no A: not a pair
    a, b = [A[s] for s in seeds], [B[s] for s in seeds]
    d = [y - x for x, y in zip(a, b)]
    low, high = scipy_ci(d)
    assert row["pairs"] == "4" and row["unpaired seeds"] == "B only: 7"
    assert row["mean A (a)"] == f"{np.mean(a):.2f}" and row["mean B"] == f"{np.mean(b):.2f}"
    assert row["B - A"] == f"{np.mean(d):+.2f}" and row["95 % CI of B - A"] == f"[{low:+.2f}, {high:+.2f}]"
    assert row["Wilcoxon p"] == f"{scipy.stats.wilcoxon(b, a).pvalue:.3g}"
    assert row["t-test p"] == f"{scipy.stats.ttest_rel(b, a).pvalue:.3g}"
    # textbook: 4 positive differences, exact two-sided signed-rank p = 2 / 2**4
    assert float(row["Wilcoxon p"]) == pytest.approx(2 / 16)
    # the t statistic by hand: mean / (sd / sqrt(n)), its two-sided p from Student's t with 3 degrees of freedom
    t = np.mean(d) / (np.std(d, ddof=1) / math.sqrt(4))
    assert float(row["t-test p"]) == pytest.approx(2 * scipy.stats.t.sf(t, 3), rel=1e-2)


def test_compare_by_folder_and_baseline_against_all(capsys, tmp_path):
    runs_of(tmp_path / "a", "a", A)
    runs_of(tmp_path / "b", "b", B)
    runs_of(tmp_path / "c", "c", {0: 69.0, 1: 70.2, 2: 71.1})
    code, out, err = report(capsys, tmp_path, "--compare", tmp_path / "a", tmp_path / "b", "--format", "csv")
    assert code == 0, err
    assert [r["config (B)"] for r in csv_rows(out)] == ["b"]
    code, out, err = report(capsys, tmp_path, "--baseline", "a", "--format", "csv")
    assert code == 0, err
    rows = {r["config (B)"]: r for r in csv_rows(out)}
    assert set(rows) == {"b", "c"} and rows["c"]["pairs"] == "3" and rows["c"]["unpaired seeds"] == "A only: 3"
    low, high = scipy_ci([69.0 - 70.0, 70.2 - 71.0, 71.1 - 72.5])
    assert rows["c"]["95 % CI of B - A"] == f"[{low:+.2f}, {high:+.2f}]"


def test_compare_says_when_the_pairs_do_not_share_the_data_order(capsys, tmp_path):
    runs_of(tmp_path / "runs", "a", A, data={"batch_size": 128})
    runs_of(tmp_path / "runs", "b", B, data={"batch_size": 256})
    code, out, err = report(capsys, tmp_path / "runs", "--compare", "a", "b")
    assert code == 0, err
    assert "'b' differs from the baseline in data.batch_size: its pairs share the seed, not the data order" in out


def test_bad_compare_and_metric_are_one_line_exit_2_before_any_statistic(capsys, tmp_path, monkeypatch):
    from peerkd.experiments import compare

    def computed(*_):
        raise AssertionError("a statistic was computed before the input was checked")

    monkeypatch.setattr(compare, "paired", computed)
    runs = tmp_path / "runs"
    runs_of(runs, "a", {0: 70.0, 1: 71.0})
    runs_of(runs, "b", {5: 70.0, 6: 71.0})
    for summary_file in runs.glob("*/summary.json"):  # methods without peers or branches: no diversity block
        summary = json.loads(summary_file.read_text())
        del summary["diversity"]
        summary_file.write_text(json.dumps(summary))
    for argv, says in ((("--compare", "a", "b"), "no seed in common"),
                       (("--compare", "a", "zz"), "no config named 'zz'"),
                       (("--compare", "a", "a"), "compared with itself"),
                       (("--metric", "diversity"), "--metric diversity: no run has it"),
                       (("--rank",), "--rank needs at least 3 configs"),
                       (("--compare", "a", "b", "--rank"), "give one of them")):
        code, out, err = report(capsys, runs, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and says in err, (argv, err)
        assert "Traceback" not in err


def test_rank_is_friedman_with_nemenyi_and_draws_the_cd_plot(capsys, tmp_path):
    scores = {"a": [70.0, 71.0, 72.5, 71.4, 70.3], "b": [71.2, 72.5, 73.0, 72.0, 71.0],
              "c": [69.0, 70.2, 71.1, 70.0, 69.9], "d": [72.0, 73.1, 73.3, 72.8, 72.0]}
    for name, values in scores.items():
        runs_of(tmp_path / "runs", name, dict(enumerate(values)))
    png = tmp_path / "cd.png"
    code, out, err = report(capsys, tmp_path / "runs", "--rank", "--format", "csv", "--cd-plot", png)
    assert code == 0, err
    rows = csv_rows(out)
    expected = scipy.stats.friedmanchisquare(*scores.values())
    # ranks per seed (1 = highest top-1): d > b > a > c in every seed
    assert [r["config"] for r in rows] == ["d", "b", "a", "c"]
    assert [float(r["mean rank"]) for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert rows[0]["friedman p"] == f"{expected.pvalue:.3g}"
    cd = 2.569 * math.sqrt(4 * 5 / (6 * 5))  # Demšar (2006) table 5: q_0.05 = 2.569 for k = 4
    assert float(rows[0]["critical difference"]) == pytest.approx(cd, abs=2e-3)
    # CD ~ 2.10: d (rank 1) and c (rank 4) are told apart, every other pair is not
    assert [r["not told apart from"] for r in rows] == ["b, a", "d, a, c", "d, b, c", "b, a"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nemenyi_critical_difference_matches_the_textbook_table():
    from peerkd.experiments.statistics import nemenyi_critical_difference

    demsar = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in demsar.items():
        n = 10
        assert nemenyi_critical_difference(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_reproducibility_columns_come_from_each_run_folder(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs_of(runs, "a", {0: 70.0, 1: 71.0}, data={"batch_size": 256}, trainer={"precision": "auto"})
    for seed, torch_version in ((0, "2.4.0"), (1, "2.5.1")):
        env_file = runs / f"a-s{seed}" / "environment.json"
        env = json.loads(env_file.read_text())
        env.update(device="cuda:0", device_name="NVIDIA H100 80GB HBM3", world_size=4, precision="bf16",
                   torch=torch_version)
        env_file.write_text(json.dumps(env))
    code, out, err = report(capsys, runs, "--format", "csv")
    assert code == 0, err
    (row,) = csv_rows(out)
    assert (row["device"], row["devices"], row["batch"], row["precision"], row["torch"], row["commit"]) == (
        "NVIDIA H100 80GB HBM3", "4", "256", "bf16", "2.4.0,2.5.1", "abcdef0")


def test_diversity_of_a_config_without_paper_block_is_read_per_diversity_group(capsys, tmp_path):
    runs_of(tmp_path / "runs", "a", {0: 70.0, 1: 71.0, 2: 72.0})  # make_run: branches_agreement = 0.4 + seed / 100
    code, out, err = report(capsys, tmp_path / "runs", "--metric", "agreement", "--format", "csv")
    assert code == 0, err
    (row,) = csv_rows(out)
    assert row["key"] == "branches" and row["ours"] == "0.4100 ± 0.0100"


def test_compare_into_a_markdown_file_is_refreshed_with_its_options(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs_of(runs, "a", A)
    runs_of(runs, "b", B)
    results = tmp_path / "RESULTS.md"
    assert report(capsys, runs, "--compare", "a", "b", "--into", results)[0] == 0
    assert f"<!-- peerkd report begin: peerkd report {runs} --compare a b -->" in results.read_text()
    make_run(runs / "a-s7", "a", 7, 61.0, paper=None)  # seed 7 now has a pair
    code, _, err = report(capsys, "--refresh", results)
    assert code == 0, err
    line = next(x for x in results.read_text().splitlines() if x.startswith("| b |"))
    assert "| 5 |" in line and line.endswith("| none |")


def test_a_paper_table_with_last_and_best_epochs(capsys, tmp_path):
    from tests.experiments.test_report import PAPER

    for seed, top1 in enumerate((70.0, 71.5, 73.0)):
        make_run(tmp_path / "runs" / f"one-s{seed}", "one", seed, top1, best_top1=top1 + 2.0, paper=PAPER)
    code, out, err = report(capsys, tmp_path / "runs", "--table", "001:2", "--epochs", "last,best")
    assert code == 0, err
    one = next(line for line in out.splitlines() if line.startswith("| ONE |"))
    (lo, hi), (best_lo, best_hi) = scipy_ci([70.0, 71.5, 73.0]), scipy_ci([72.0, 73.5, 75.0])
    assert (f"71.50 ± 1.50 [{lo:.2f}, {hi:.2f}] (80.00) ✗ n=3; best: 73.50 ± 1.50 [{best_lo:.2f}, {best_hi:.2f}]"
            in one)
