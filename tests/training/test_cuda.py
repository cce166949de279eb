"""CUDA-only checks of the fast path (skipped without a GPU; the first thing a GPU session runs):
``pytest -q tests/training/test_cuda.py``.

CPU tests cover the logic of every execution; these check what only a GPU can: the whole-step CUDA graph and the
reduce-overhead compile give the eager step's parameters, streams give the sequential members' outputs and
gradients, a default run (trainer.step auto, trainer.members auto, bf16, channels_last) trains end to end and
records the execution it measured, and a run with a whole-step graph and grouped members trains too.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from peerkd.training.step import FastStep
from peerkd.models import build_model
from peerkd.models.members import FusedMembers, StreamedMembers, build_members
from peerkd.training.trainer import Trainer
from tests.helpers import build, random_batch, tiny_config, tiny_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = torch.device("cuda")
TOLERANCE = 1e-4  # fp32 on the GPU: cuDNN may pick other algorithms for the captured and the eager convolutions


def _cuda_batch(task, seed: int):
    batch = random_batch(task, batch_size=8, seed=seed)
    return type(batch)(x=batch.x.to(DEVICE), y=batch.y.to(DEVICE), index=batch.index.to(DEVICE))


def _steps(mode: str, members: str, steps: int = 6, **kwargs):
    """Parameters after ``steps`` fp32 training steps of a DML pair built as ``members`` in FastStep ``mode``."""
    task = tiny_task(num_classes=5, image_size=16)
    torch.manual_seed(0)
    method = build({"name": "dml", "models": ["resnet8", "resnet8"]}, task, members=members).to(DEVICE).train()
    step = FastStep(method, method.trainable_parameters(), lr=0.05, device=DEVICE, mode=mode, **kwargs)
    for i in range(steps):
        step.set_lr(0.05 / (i + 1))  # the lr changes every step: a captured graph must read the new value
        step(_cuda_batch(task, seed=i))
    means, count, bad = step.drain_logs()
    assert count == steps and not bad
    return {k: v.detach().float().cpu() for k, v in method.state_dict().items()}, means


def _assert_close(got: dict, expected: dict, tolerance: float = TOLERANCE) -> None:
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=tolerance, rtol=tolerance), key


@pytest.mark.parametrize("members", ["separate", "grouped", "streams", "vmap"])
def test_graph_step_matches_eager(members):
    expected, expected_logs = _steps("eager", members)
    got, logs = _steps("graph", members)
    _assert_close(got, expected)
    assert abs(logs["loss"] - expected_logs["loss"]) < 1e-3


def test_reduce_overhead_compile_matches_eager():
    expected, _ = _steps("eager", "grouped")
    got, _ = _steps("compile", "grouped", compile_mode="reduce-overhead")
    _assert_close(got, expected, tolerance=1e-3)  # inductor's fused kernels sum in another order


def test_graph_step_refuses_a_batch_of_another_shape():
    task = tiny_task(num_classes=5, image_size=16)
    method = build({"name": "vanilla", "models": ["resnet8"]}, task).to(DEVICE).train()
    step = FastStep(method, method.trainable_parameters(), lr=0.05, device=DEVICE, mode="graph", warmup_steps=1)
    for i in range(3):
        step(_cuda_batch(task, seed=i))
    small = random_batch(task, batch_size=4)
    small = type(small)(x=small.x.to(DEVICE), y=small.y.to(DEVICE), index=small.index.to(DEVICE))
    with pytest.raises(ValueError, match="static batches"):
        step(small)


def test_streams_give_the_sequential_outputs_and_gradients():
    torch.manual_seed(0)
    members = [build_model("resnet8", 5).to(DEVICE) for _ in range(3)]
    streamed, plain = build_members(copy.deepcopy(members), "streams"), nn.ModuleList(members)
    assert isinstance(streamed, StreamedMembers)
    x = [torch.randn(8, 3, 16, 16, device=DEVICE) for _ in range(3)]
    outs = streamed.run(x)
    sum(o.square().mean() for o in outs).backward()
    expected = [m(xi) for m, xi in zip(plain, x)]
    sum(o.square().mean() for o in expected).backward()
    for got, want in zip(outs, expected):
        assert torch.allclose(got, want, atol=1e-5)
    for (name, p), q in zip(streamed.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_default_cuda_run_trains_and_records_its_execution(tmp_path, capsys):
    config = tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=3,
                         overrides=("trainer.device=cuda",))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert (trainer.step_mode, trainer.compile_mode, trainer.step_fallback) == ("compile", "reduce-overhead", True)
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    execution = [r for r in records if r["kind"] == "execution"]
    assert len(execution) == 1 and execution[0]["members"] in ("separate", "grouped", "streams", "vmap")
    assert all(execution[0]["ms_per_step"][k] is not None for k in ("separate", "grouped", "streams", "vmap"))
    assert f"trainer.members auto: '{execution[0]['members']}' (ms per step timed eager: " in capsys.readouterr().out
    assert summary["keys"]["ensemble"]["last"]["top1"] > 100 / 4 + 10  # 4 generated classes: chance is 25 %


def test_a_graph_step_run_of_grouped_members_trains_without_measuring(tmp_path):
    config = tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=3,
                         overrides=("trainer.device=cuda", "trainer.members=grouped", "trainer.step=graph"))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert isinstance(trainer.method.models, FusedMembers) and trainer.execution is None
    assert trainer.step_mode == "graph"
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "execution"]  # an explicit execution is not measured
    assert summary["keys"]["ensemble"]["last"]["top1"] > 100 / 4 + 10
