"""Property-based tests (hypothesis, a fixed example budget, derandomized): every input to the YAML loader, the
``--set`` overrides, the schema, ``peerkd train -c``, ``peerkd report`` / ``peerkd sweep`` arguments and a dataset's
npz files either validates or is refused with one line (ConfigError / DataError, exit 2) — never a traceback, never a
run folder left behind."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkd.cli import main
from peerkd.config import Config, ConfigError, build_config, config_keys, load_config
from peerkd.core.errors import DataError
from peerkd.data.datasets import load_npz_split

# a fixed budget: the same examples on every run (derandomize), nothing written to a hypothesis database
BUDGET = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SECTIONS = ["name", "seed", "imports", "data", "method", "optim", "schedule", "trainer", "paper"]
# the schema's own keys (so the fuzzer reaches deep validation) mixed with near-misses and arbitrary text
KNOWN_KEYS = sorted({part for key in config_keys("resumable") for part in key.split(".")}
                    | {"name", "models", "model", "batch_size", "lr", "epochs", "milestones", "kind", "dataset",
                       "synthetic", "num_classes", "temperature", "branches", "cells", "value", "id", "table"})
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS + SECTIONS), st.text(min_size=1, max_size=12))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["vanilla", "dml", "kdcl", "resnet8", "cosine", "auto", "cpu", "1e400", "nan"]))
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                     max_leaves=25)
CONFIG_TREES = st.dictionaries(st.sampled_from(SECTIONS) | KEYS, TREES, max_size=6)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@BUDGET
@given(CONFIG_TREES)
def test_any_config_tree_validates_or_is_one_config_error(tree):
    try:
        config = build_config(tree)
    except ConfigError as err:
        assert "\n" not in str(err).strip() and str(err), repr(err)
    else:
        assert isinstance(config, Config)


@BUDGET
@given(st.sampled_from(config_keys("resumable") + ("method.name", "method.temperature", "optim.lr", "seed"))
       | st.text(max_size=25), st.text(max_size=25) | st.sampled_from(["[1,2", "{a: 1}", "1e999", "-0", "null"]))
def test_any_override_validates_or_is_one_config_error(key, value):
    try:
        build_config({}, [f"{key}={value}"])
    except ConfigError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(err)


@BUDGET
@given(st.one_of(st.text(max_size=200),
                 CONFIG_TREES.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
                 st.sampled_from(["a: 1\na: 2\n", "name: [unclosed", "- 1\n- 2\n", "!!python/object:os.system x",
                                  "&a [*a]", "x: !!binary 'AAA='", "\x00", "\ufeffname: r"])))
def test_any_yaml_file_through_peerkd_train_is_refused_in_one_line_with_no_run_folder(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    run = folder / "run"
    stderr = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(stderr):
        code = main(["train", "-c", str(path), "--set", "schedule.epochs=0", "--out", str(run)])  # never trains
    assert code == 2
    err = stderr.getvalue().strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not run.exists()


@pytest.mark.parametrize("text", ["a: " + "[" * 3000 + "]" * 3000, "a:\n" + "".join("  " * i + f"k{i}:\n"
                                                                                         for i in range(1, 400))])
def test_deep_nesting_is_one_config_error(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


@BUDGET
@given(st.lists(st.one_of(st.text(max_size=15), st.sampled_from(["--format", "csv", "latex", "--metric", "top1",
                                                                 "--table", "001:2", "--best", "--plot", "x.png",
                                                                 "--into", "--refresh", "-", "", "--compare",
                                                                 "--baseline", "--rank", "--cd-plot", "--epochs",
                                                                 "last,best"])), max_size=6))
def test_any_report_arguments_end_in_an_exit_code(capsys, args):
    try:
        code = main(["report", *args])
    except SystemExit as stop:  # argparse's usage error
        code = stop.code
    assert code in (0, 1, 2)
    capsys.readouterr()


@BUDGET
@given(st.text(max_size=12) | st.sampled_from(["0-4", "3-1", "1,,2", "99999999999999999999", "-1", "0-99999999"]),
       st.lists(st.text(max_size=20), max_size=2))
def test_any_sweep_seeds_and_overrides_end_in_an_exit_code(tmp_path_factory, capsys, seeds, overrides):
    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "method": {"name": "vanilla", "models": ["resnet8"]}}))
    sets = [a for o in overrides for a in ("--set", o)]
    try:
        code = main(["sweep", str(config), "--seeds", seeds, *sets, "--out", str(folder / "runs"), "--dry-run"])
    except SystemExit as stop:
        code = stop.code
    assert code in (0, 2)
    if code == 2:
        one_line(capsys)
    capsys.readouterr()
    assert not (folder / "runs").exists()  # a dry run writes nothing


ARRAYS = st.one_of(
    st.builds(lambda n, h, c, dtype: np.zeros((n, h, h, c), dtype=dtype), st.integers(0, 3), st.integers(1, 40),
              st.integers(1, 4), st.sampled_from([np.uint8, np.float32, np.int64, np.bool_])),
    st.builds(np.array, st.lists(st.floats(allow_nan=True) | st.integers(-5, 300), max_size=6)))


@BUDGET
@given(st.one_of(st.binary(max_size=64).map(lambda b: ("raw", b)),
                 st.dictionaries(st.sampled_from(["images", "labels", "other"]), ARRAYS, max_size=3)
                 .map(lambda arrays: ("npz", arrays))))
def test_any_dataset_file_loads_or_is_one_data_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("npz") / "train.npz"
    kind, payload = content
    if kind == "raw":
        path.write_bytes(payload)
    else:
        np.savez(path, **payload)
    try:
        images, labels = load_npz_split(path, "cifar100", 100)
    except DataError as err:
        assert str(err) and "\n" not in str(err), repr(err)
    else:
        assert images.dtype == np.uint8 and labels.dtype == np.int64 and len(images) == len(labels)
        assert not math.isnan(float(labels.sum())) if labels.size else True
