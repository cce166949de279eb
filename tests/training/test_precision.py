"""trainer.precision: the capability choice (with a faked device query) and the fp16 gradient-scaler step."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tests.helpers import tiny_config
from peerkd.config import ConfigError, build_config
from peerkd.training.step import FastStep
from peerkd.training.trainer import Trainer, resolve_precision


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_follows_the_devices_bf16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)  # an A100 / a V100 or T4
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("fp16", torch.device("cuda", 0)) == "fp16"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"


def test_auto_is_fp32_on_cpu_and_bf16_is_refused_where_the_gpu_lacks_it(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-32GB")
    with pytest.raises(ConfigError, match="trainer.precision: bf16 asked for, but Tesla V100.* use fp16"):
        resolve_precision("bf16", torch.device("cuda", 0))


def test_fp16_is_a_config_choice():
    assert build_config({"trainer": {"precision": "fp16"}}).trainer.precision == "fp16"
    with pytest.raises(ConfigError, match="trainer.precision"):
        build_config({"trainer": {"precision": "fp8"}})


@dataclass
class _Out:
    loss: torch.Tensor
    logs: dict


class _Toy(nn.Module):
    """loss = mean((W x - 1)^2) on the batch it is called with (``x`` as the Batch stand-in)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return _Out(((self.linear(x) - 1) ** 2).mean(), {})


def _steps(grad_scaler: bool, inputs) -> tuple[nn.Module, FastStep]:
    torch.manual_seed(0)
    toy = _Toy()
    step = FastStep(toy, list(toy.parameters()), lr=0.1, grad_scaler=grad_scaler)
    for x in inputs:
        step(x)
    return toy, step


def test_the_scaled_step_is_the_plain_step_and_skips_an_overflow():
    inputs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    plain, _ = _steps(False, inputs)
    scaled, step = _steps(True, inputs)
    assert step.scaler is not None and step.scaler.get_scale() == 65536.0  # torch's initial scale, no overflow yet
    for a, b in zip(plain.parameters(), scaled.parameters()):  # a power-of-2 scale and its inverse are exact
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    before = [p.detach().clone() for p in scaled.parameters()]
    step(torch.full((8, 4), 1e18))  # loss ~1e36 is finite, times the scale it overflows: the step must be skipped
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert step.scaler.get_scale() == 32768.0  # backed off by torch's factor 0.5
    step(inputs[0])  # and the next step trains again
    assert not all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))


def test_an_fp16_run_autocasts_to_fp16_and_checkpoints_its_scaler(tmp_path):
    config = tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=1, train_size=64,
                         overrides=("trainer.precision=fp16", "data.batch_size=32"))
    trainer = Trainer(config, run_dir=tmp_path / "run")  # (fp16 convolutions on CPU are too slow to train here)
    assert trainer.precision == "fp16" and trainer.step.scaler is not None
    with trainer.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.float16 and torch.is_autocast_enabled("cpu")
    trainer.step.scaler.scale(torch.ones(()))  # the scaler's first use allocates its scale
    trainer.step.scaler.update(1024.0)  # as after a few overflows
    assert trainer.state()["grad_scaler"]["scale"] == 1024.0
    trainer.save()
    trainer.release()  # the folder's lock: the resumed trainer below takes the same folder
    resumed = Trainer(config, run_dir=tmp_path / "run", resume=True)
    resumed.restore()
    assert resumed.step.scaler.get_scale() == 1024.0
    assert Trainer(tiny_config({"name": "vanilla", "models": ["resnet8"]}, train_size=64),
                   run_dir=tmp_path / "fp32").step.scaler is None  # auto on CPU: fp32, no scaler
