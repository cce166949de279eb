"""The speed harness on CPU with tiny settings: every registered method's row (explicit or derived) through both
paths, the row fields and JSON, a failing row that does not stop the run, ``--only``, and the two loaders giving the
same Batch fields."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, fields

import pytest
import torch

from benchmarks import harness as bench
from benchmarks.harness import BenchRow
from peerkd.core.method import Method
from peerkd.core.registry import METHODS, method_names
from peerkd.data.batch import Batch
from tests.helpers import tiny_teacher_run

TINY = ["--quick", "--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "8", "--images", "64"]


def row(name: str) -> BenchRow:
    (found,) = [r for r in bench.all_rows() if r.name == name]
    return found


def quiet_run(argv: list[str], rows=None) -> tuple[list[dict], str]:
    """``bench.run`` on one thread (two threads on a busy 2-core machine wait on each other: 10x slower steps),
    returning the records and the printed text; torch's thread count is restored."""
    printed, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(printed):
            records = bench.run(bench.parse_args([*TINY, "--threads", "1", *argv]), rows=rows)
    finally:
        torch.set_num_threads(threads)  # --threads set it for the whole process
    return records, printed.getvalue()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained run of CIFAR-100's class count: the teacher of the KD and Tf-KD self rows."""
    return tiny_teacher_run(tmp_path_factory.mktemp("teacher") / "run", num_classes=bench.NUM_CLASSES)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, teacher):
    """One tiny run of every row the harness has (the explicit ones and one derived per other registered method),
    after a row that cannot build, a skipped one and one whose config is missing; returns the records by row name,
    the JSON file's rows and the printed text."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    rows = [BenchRow("broken", "cifar100/vanilla_resnet32.yaml", {"models": ["no_such_model"]}),
            BenchRow("skipped", skip="needs something"), BenchRow("missing", "no/such_config.yaml"),
            *bench.all_rows()]
    records, printed = quiet_run(["--teacher-run", str(teacher), "--out", str(out)], rows=rows)
    return {r["shape"]: r for r in records}, json.loads(out.read_text()), printed


def test_every_registered_method_has_a_row_that_builds_and_steps(bench_run):
    records, _, _ = bench_run
    timed = {}
    for entry in bench.all_rows():
        record = records[entry.name]
        assert "error" not in record and "skipped" not in record, record
        for path in ("reference", "fast"):
            assert record[path].get("ms_per_step", 0) > 0, (entry.name, path, record[path])
        timed.setdefault(record["method"], []).append(entry.name)
    assert sorted(timed) == method_names()
    assert timed["kd"] == ["kd (default options)"]  # derived: no explicit row names KD


def test_real_methods_time_through_both_paths(bench_run):
    records, _, _ = bench_run
    for name, method in (("vanilla R32", "vanilla"), ("CutnMix-OD 2xR32", "cutnmix"), ("CS-KD R32", "cskd")):
        record = records[name]
        assert record["method"] == method and record["config"].startswith("configs/")
        assert record["flops_per_step"] > 0 and record["ratio"] > 0
        for path in ("reference", "fast"):
            timing = record[path]
            assert timing["ms_per_step"] > 0 and timing["s_per_epoch"] > 0 and timing["images_per_s"] > 0
            assert timing["warmup_s"] >= 0 and timing["peak_memory_mb"] is None  # CPU: no device memory
            assert timing["peak_fraction"] is None  # no --peak-tflops given
    assert records["vanilla R32"]["models"] == ["resnet8"]  # --quick swapped ResNet-32 for ResNet-8
    assert records["CutnMix-OD 2xR32"]["views"] == 2 and records["CutnMix-OD 2xR32"]["mixing"] == "cutnmix"
    assert records["CS-KD R32"]["class_pairs"]


def test_members_compare_times_every_execution_for_methods_with_member_groups():
    records, printed = quiet_run(["--members-compare", "--only", "CutnMix-OD 2xR32"])
    (cohort,) = records  # two identical peers: one member group
    labels = ("fast", "fast_separate", "fast_streams", "fast_vmap")
    assert [cohort[p]["members"] for p in labels] == ["grouped", "separate", "streams", "vmap"]
    assert all(cohort[p]["ms_per_step"] > 0 for p in labels)
    assert "members streams" in printed
    (single,) = quiet_run(["--members-compare", "--only", "vanilla R32"])[0]  # one network: no member group
    assert single["fast"]["members"] == "n/a" and not any(p in single for p in labels[1:])


def test_json_holds_the_printed_rows(bench_run):
    records, from_json, printed = bench_run
    assert [r["shape"] for r in from_json] == list(records)
    assert from_json[3]["reference"]["ms_per_step"] == records["vanilla R32"]["reference"]["ms_per_step"]
    assert "ratios only" in printed


def test_a_failing_row_is_reported_and_the_run_goes_on(bench_run):
    records, _, printed = bench_run
    broken = records["broken"]
    assert "no_such_model" in broken["reference"]["error"] and "no_such_model" in broken["fast"]["error"]
    assert broken["ratio"] is None and broken["flops_per_step"] is None
    assert records["skipped"]["skipped"] == "needs something"
    assert "does not exist" in records["missing"]["error"]
    lines = printed.splitlines()
    assert any(line.startswith("broken") and "reference failed" in line for line in lines)
    assert any(line.startswith("skipped") and "skipped: needs something" in line for line in lines)
    assert any(line.startswith("missing") and "error: ConfigError" in line for line in lines)
    assert records["CS-KD R32"]["ratio"] > 0  # rows after the failure are still timed


def test_one_failing_path_keeps_the_other(monkeypatch):
    def broken_fast(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench, "time_reference", lambda *args: bench.Timing(10.0, 0.5, None))
    monkeypatch.setattr(bench, "count_step_flops", lambda *args: 1000)
    monkeypatch.setattr(bench, "time_fast", broken_fast)
    record = bench.time_row(row("DML 2xR32"), bench.synthetic_cifar(32), bench.parse_args(TINY), torch.device("cpu"))
    assert record["reference"]["ms_per_step"] == 10.0
    assert record["fast"]["error"] == "RuntimeError: boom" and record["ratio"] is None
    assert "fast failed: RuntimeError: boom" in bench.format_row(record)


def test_only_selects_rows_by_name_substring(capsys):
    assert [r.name for r in bench.select_rows(bench.all_rows(), "dml")] == ["DML 2xR32", "DML 2xR110"]
    assert bench.main(["--list", "--only", "CS-KD"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and listed[0].startswith("CS-KD R32") and "configs/cutnmix/table1" in listed[0]


def test_only_matching_no_row_is_refused(capsys):
    """A row renamed under a script's ``--only`` fails loudly instead of timing nothing."""
    assert bench.main(["--list", "--only", "DML 2xR33"]) == 2
    assert "--only 'DML 2xR33' matches no bench row" in capsys.readouterr().err


def test_every_row_config_validates_and_quick_swaps_backbones():
    for entry in bench.all_rows():
        if not entry.skip:
            bench.row_config(entry, bench.CONFIGS, quick=False)  # raises ConfigError if a config moved or broke
    assert bench.covered_methods(bench.all_rows()) == set(method_names())
    assert bench.row_config(row("CSS 2xR110x3"), bench.CONFIGS, quick=True).method.options.models == [
        "resnet14", "resnet14"]
    byot = bench.row_config(row("BYOT R18"), bench.CONFIGS, quick=True).method.options
    assert byot.model == "resnet18" and byot.model_options["width"] == 8
    assert bench.row_config(row("CL R32x4"), bench.CONFIGS, quick=False).method.options.model == "resnet32"
    (kd,) = [r for r in bench.all_rows() if r.method == "kd"]
    assert bench.row_config(kd, bench.CONFIGS, quick=True).method.options.student == "resnet8"
    assert bench.row_config(kd, bench.CONFIGS, quick=True, teacher_run="t").method.options.teacher_run == "t"


def test_rows_need_a_teacher_run_only_where_the_method_refuses_to_build_without_one():
    args = bench.parse_args(TINY)
    records = {entry.name: bench.time_row(entry, bench.synthetic_cifar(16), args, torch.device("cpu"))
               for entry in bench.all_rows() if entry.name in ("kd (default options)", "Tf-KD self R32")}
    for record in records.values():
        assert "--teacher-run RUN_DIR" in record["skipped"] and "method.teacher_run" in record["skipped"]
    reg = bench.prepare(row("Tf-KD reg R32"), args)[0]
    assert reg.method.options.teacher_run == "" and bench.missing_teacher(reg) == ""  # the virtual teacher builds


@dataclass
class _Options:
    model: str = "resnet32"


class _Derived(Method):
    """A method no explicit row names (its derived row is checked, never built)."""

    Options = _Options


@pytest.mark.parametrize("bench_config", ["", "cifar100/derived_method.yaml"])
def test_a_new_method_gets_a_derived_row_from_its_defaults_or_its_bench_config(tmp_path, bench_config):
    (tmp_path / "cifar100").mkdir()
    (tmp_path / "cifar100" / "derived_method.yaml").write_text(
        "data: {dataset: cifar100}\nmethod: {name: derived_method, model: resnet8}\n")
    derived = type("Derived", (_Derived,), {"bench_config": bench_config})
    METHODS.add("derived_method", derived)
    try:
        assert "derived_method" not in bench.covered_methods(bench.ROWS)
        (entry,) = [r for r in bench.derived_rows(bench.ROWS, tmp_path) if r.method == "derived_method"]
        config = bench.row_config(entry, tmp_path, quick=True)
        assert config.method.name == "derived_method" and config.data.dataset == "cifar100"
        if bench_config:
            assert entry.name == "derived_method (cifar100/derived_method)" and entry.config == bench_config
            assert config.method.options.model == "resnet8"  # the named config's options
        else:
            assert entry.name == "derived_method (default options)" and not entry.config
            assert config.method.options.model == "resnet8"  # the default resnet32, made quick
            assert "the default options of 'derived_method'" in bench.list_rows([entry])
    finally:
        METHODS.unregister("derived_method")


@pytest.mark.parametrize("name", ["CutnMix-OD 2xR32", "CS-KD R32", "PCL R32x3", "dlb (default options)"])
def test_reference_loader_gives_the_device_loaders_fields(name):
    config = bench.row_config(row(name), bench.CONFIGS, quick=True)
    spec = bench.data_spec(config)
    images, labels = bench.synthetic_cifar(32)
    cpu = torch.device("cpu")
    loader = bench.reference_loader(images, labels, spec, batch_size=8, workers=0, pin_memory=False)
    reference = next(bench.reference_batches(loader, spec, cpu))
    device = next(bench.device_batches(images, labels, spec, 8, cpu, channels_last=False))
    for f in fields(Batch):
        a, b = getattr(reference, f.name), getattr(device, f.name)
        assert (a is None) == (b is None), f.name
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, f.name


def test_cuda_rows_print_every_column():
    timing = dict(ms_per_step=4.0, warmup_s=30.0, peak_memory_mb=900.0, s_per_epoch=1.56, images_per_s=32000.0,
                  peak_fraction=0.05)
    record = {"shape": "DML 2xR32", "device": "cuda", "ratio": 5.0, "reference": dict(timing, ms_per_step=20.0),
              "fast": dict(timing, members="grouped")}
    text = bench.format_row(record)
    assert "ratio 5.00x" in text and "4.00 ms/step" in text and "900 MiB" in text and "5.0% of peak" in text
    assert "[members grouped]" in text


def test_profile_writes_an_operator_table_per_path(tmp_path, capsys):
    """--profile appends torch.profiler's table for the reference and the fast path of each selected row."""
    target = tmp_path / "profile.txt"
    bench.run(bench.parse_args([*TINY, "--threads", "1", "--only", "DML 2xR32", "--profile", str(target)]))
    text = target.read_text()
    assert "== reference:" in text and "== fast, members grouped:" in text
    assert "aten::convolution" in text or "aten::conv2d" in text  # the table lists the step's operators
