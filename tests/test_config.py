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
