"""Metrics as the papers compute them: the ECE bin count is a config key (paper 004's configs use PS-KD's 10 bins)
and evaluation runs in fp32 even when training runs under bf16 autocast."""
from pathlib import Path

import pytest
import torch

import peerkd
from tests.helpers import tiny_config
from peerkd.metrics import Evaluator, expected_calibration_error
from peerkd.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_ece_bin_count_is_a_config_key_and_the_evaluator_uses_it():
    # confidences 0.62 (right), 0.68 (wrong): 10 bins (0.6, 0.7] hold both -> |0.5 - 0.65| = 0.15;
    # 15 bins split them at 2/3 -> (|1 - 0.62| + |0 - 0.68|) / 2 = 0.53
    conf, correct = torch.tensor([0.62, 0.68], dtype=torch.float64), torch.tensor([True, False])
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.15, abs=1e-9)
    assert expected_calibration_error(conf, correct, bins=15) == pytest.approx(0.53, abs=1e-9)
    assert peerkd.load_config().trainer.ece_bins == 15
    logits = torch.log(torch.tensor([[0.62, 0.38], [0.32, 0.68]]))  # predictions 0 and 1, labels 0 and 0
    for bins, expected in ((10, 15.0), (15, 53.0)):
        evaluator = Evaluator(ece_bins=bins)
        evaluator.update({"net": logits}, torch.tensor([0, 0]))
        assert evaluator.compute().keys["net"]["ece"] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(peerkd.ConfigError, match="trainer.ece_bins"):
        peerkd.load_config(overrides=["trainer.ece_bins=0"])


def test_paper_004_configs_use_pskd_ten_ece_bins():
    paths = sorted((CONFIGS / "pskd").rglob("*.yaml"))
    assert paths
    for path in paths:
        assert peerkd.load_config(path).trainer.ece_bins == 10, path


def test_evaluation_does_not_enter_autocast_when_training_runs_in_bf16(tmp_path):
    config = tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=1, train_size=64,
                         overrides=("trainer.precision=bf16", "data.synthetic.test_size=64"))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    with trainer.autocast():  # training does run under (CPU) bf16 autocast
        assert torch.is_autocast_enabled("cpu")
    seen = []
    predict = trainer.method.predict

    def recording_predict(x):
        seen.append(torch.is_autocast_enabled("cpu"))
        out = predict(x)
        seen.extend(v.dtype == torch.float32 for v in out.values())
        return out

    trainer.method.predict = recording_predict
    trainer.evaluate()
    assert seen and seen[0] is False and all(seen[1:])
