"""The config schema: files, overrides and the errors for wrong keys and types."""
import subprocess
import sys

import pytest

from peerkd.config import ConfigError, build_config, load_config


def test_defaults_and_overrides():
    config = build_config({"method": {"name": "dml", "models": ["resnet8", "resnet8"]}},
                          ["optim.lr=0.05", "schedule.milestones=[10, 20]", "method.temperature=4",
                           "optim.weight_decay=5e-4"])
    assert config.optim.lr == 0.05 and config.schedule.milestones == [10, 20]
    assert config.method.options.temperature == 4.0 and isinstance(config.method.options.temperature, float)
    assert config.optim.weight_decay == 5e-4
    again = build_config(config.to_dict())
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("tree, overrides, message", [
    ({"optim": {"lrr": 0.1}}, [], "unknown key 'optim.lrr'; did you mean 'optim.lr'"),
    ({}, ["schedule.epochz=3"], "did you mean 'schedule.epochs'"),
    ({"method": {"name": "dml", "temprature": 2}}, [], "did you mean 'method.temperature'"),
    ({"method": {"name": "dmll"}}, [], "unknown method 'dmll'; did you mean 'dml'"),
    ({"optim": {"lr": "fast"}}, [], "optim.lr: expected a number"),
    ({"schedule": {"epochs": 2.5}}, [], "schedule.epochs: expected an integer"),
    ({"schedule": {"kind": "linear"}}, [], "schedule.kind: 'linear' is not one of"),
    ({"data": {"dataset": "cifar1000"}}, [], "did you mean 'cifar100'"),
    ({"data": {"batch_size": 0}}, [], "data.batch_size: must be positive"),
])
def test_bad_configs_name_the_key(tree, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config(tree, overrides)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_a_wrong_key_with_exit_2_and_no_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\nmethod: {name: vanilla, models: [resnet8]}\ntrainer: {devise: cpu}\n")
    result = subprocess.run([sys.executable, "-m", "peerkd", "train", "-c", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'trainer.devise'; did you mean 'trainer.device'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2


def test_every_config_file_in_the_repository_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert files, "configs/ holds no YAML file"
    for path in files:
        load_config(path)


# ------------------------------------------------------------------------------------------ choices, one way

@pytest.mark.parametrize("tree, overrides, message", [
    ({}, ["data.mixing=cutmixx"],
     "data.mixing: 'cutmixx' is not one of none, mixup, cutmix, cutnmix (did you mean 'cutmix'?)"),
    ({}, ["trainer.precision=bf61"], "trainer.precision: 'bf61' is not one of auto, bf16, fp16, fp32"),
    ({}, ["data.train_transform=pad"], "data.train_transform: 'pad' is not one of default, random_resized_crop, "
                                      "resize_crop, pad_crop (did you mean 'pad_crop'?)"),
    ({}, ["trainer.members=fused"], "trainer.members: 'fused' is not one of auto, separate, grouped, streams, vmap"),
    ({"method": {"name": "kdcl", "naive_scope": "epoch"}}, [],
     "method.naive_scope: 'epoch' is not one of sample, batch"),
    ({"method": {"name": "one", "target_gradient": "weight"}}, [],
     "method.target_gradient: 'weight' is not one of none, full, weights (did you mean 'weights'?)"),
    ({"method": {"name": "mde", "target": "fmm"}}, [],  # an Options subclass redeclaring an inherited choice
     "method.target: 'fmm' is not one of gate, attention, ffm, mean (did you mean 'ffm'?)"),
    ({"method": {"name": "pskd", "memory_dtype": "int8"}}, [],
     "method.memory_dtype: 'int8' is not one of float32, float16, bfloat16"),
    ({"paper": {"id": "000", "table": "1", "cells": [{"row": "r", "value": 1.0, "metric": "top-1"}]}}, [],
     "paper.cells[0].metric: 'top-1' is not one of top1, error"),
])
def test_a_choice_outside_its_literal_names_the_key_and_the_allowed_values(tree, overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(tree, overrides)
    assert message in str(err.value)


def test_every_method_choice_is_a_literal_whose_default_is_allowed():
    """Options choices are declared in the schema: each Literal holds its default, and the allowed values reach
    YAML unchanged (a value that is allowed builds)."""
    import dataclasses
    import typing

    from peerkd.core.registry import METHODS

    choices = 0
    for name in METHODS.names():
        options = METHODS.get(name).Options
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
            if allowed:
                choices += 1
                assert f.default in allowed, (name, f.name)
                built = build_config({"method": {"name": name, f.name: allowed[-1]}}, [])
                assert getattr(built.method.options, f.name) == allowed[-1]
    assert choices >= 20  # byot 2, css 1, cutnmix 1, kdcl 4, mde 3, okddip 3, one 2, pskd 1, pskd_ml 3, tfkd 2


# ------------------------------------------------------------------------------------------ tagged keys

def test_keys_tagged_in_the_schema_are_listed_dotted():
    from peerkd.config import config_keys

    placement = {"data.root", "data.download", "data.workers", "trainer.device", "trainer.progress",
                 "trainer.threads", "trainer.out", "trainer.log_every", "trainer.loggers", "trainer.loggers_required",
                 "trainer.tracker_project"}
    assert set(config_keys("placement")) == placement and len(config_keys("placement")) == len(placement)
    assert set(config_keys("resumable")) == placement | {
        "schedule.epochs", "schedule.milestones", "trainer.eval_every", "trainer.precision", "trainer.channels_last",
        "trainer.cudnn_benchmark", "data.eval_batch_size", "data.test_subset", "trainer.members", "trainer.step",
        "import_digests"}
    assert config_keys("no-such-tag") == ()


# ------------------------------------------------------------------------------------------ paper blocks

def test_a_paper_id_is_any_non_empty_string_to_the_library():
    cell = {"row": "ResNet-32", "value": 70.0}
    assert build_config({"paper": {"id": "my-paper-2031", "table": "3", "cells": [cell]}}).paper.id == "my-paper-2031"
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="paper.id: name the paper"):
            build_config({"paper": {"id": empty, "table": "3", "cells": [cell]}})


def test_overrides_leave_the_callers_tree_as_it_was():
    tree = {"method": {"name": "dml", "models": ["resnet8", "resnet8"]}, "optim": {"lr": 0.1}}
    config = build_config(tree, ["method.models=[resnet20, resnet20]", "optim.lr=0.2"])
    assert config.method.options.models == ["resnet20", "resnet20"] and config.optim.lr == 0.2
    assert tree == {"method": {"name": "dml", "models": ["resnet8", "resnet8"]}, "optim": {"lr": 0.1}}
