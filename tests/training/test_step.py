"""The graph-friendly step (peerkd.training.step) against itself: the trainer's loop is nothing but the eager step
driven by ``learning_rate()``, and the compiled step agrees with the eager one.

The trainer trains through :class:`FastStep` too, so nothing here compares the step with plain PyTorch: that is
tests/training/test_sgd_reference.py (the trainer against ``torch.optim.SGD`` with a float lr, a torch LR scheduler and
``F.cross_entropy``, bitwise on CPU in fp32).
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from peerkd.metrics import EvalResult
from peerkd.training.step import FastStep
from peerkd.training.trainer import Trainer, learning_rate
from tests.helpers import random_batch, tiny_config, tiny_task, twin_methods


def _fast_step(method, config, mode="eager", **kwargs) -> FastStep:
    optim = config.optim
    return FastStep(method, method.trainable_parameters(), lr=optim.lr, momentum=optim.momentum,
                    nesterov=optim.nesterov, weight_decay=optim.weight_decay, device="cpu", mode=mode, **kwargs)


def test_the_trainer_loop_is_the_eager_fast_step_driven_by_learning_rate(tmp_path):
    """The trainer's loop (its schedule, epoch hooks, evaluation and logging) adds nothing to the weights beyond an
    eager FastStep fed the same batches with ``learning_rate()``; both sides are FastStep, so this checks the loop
    around the step, not the step's arithmetic (test_sgd_reference.py does that)."""
    config = tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=2, train_size=48,
                         overrides=("data.batch_size=16", "trainer.members=grouped"))
    trainer = Trainer(config, run_dir=tmp_path / "plain")
    method = copy.deepcopy(trainer.method)
    loader = trainer.train_loader
    # the trainer's own loop, without its file output and evaluation (they do not touch the weights)
    trainer.log, trainer.save, trainer.evaluate = (lambda record: None), (lambda: None), (lambda: EvalResult({}))
    trainer._loop()

    fast = _fast_step(method, config)
    method.train()
    steps, logged = len(loader), 0
    for epoch in range(config.schedule.epochs):
        method.on_epoch_start(epoch, config.schedule.epochs)
        for step, batch in enumerate(loader.epoch(epoch)):
            fast.set_lr(learning_rate(config, epoch, step, steps))
            fast(batch)
        means, count, bad = fast.drain_logs()
        assert count == steps and not bad and set(means) == {"loss", "ce0", "ce1", "kl0", "kl1"}
        logged += count
    assert logged == trainer.global_step
    expected = trainer.method.state_dict()
    for key, value in method.state_dict().items():
        assert torch.equal(value, expected[key]), f"{key} differs after {logged} steps"


# inductor (torch's default backend) spends minutes generating C++ on a 2-core machine; aot_eager traces the same
# graphs (Dynamo capture, AOT autograd) without code generation. PEERKD_TEST_INDUCTOR=1 runs the full backend.
COMPILE_BACKEND = "inductor" if os.environ.get("PEERKD_TEST_INDUCTOR") == "1" else "aot_eager"


def test_compiled_fast_step_agrees_with_eager():
    """The compiled step (``aot_eager`` unless PEERKD_TEST_INDUCTOR=1) trains like the eager one, to 1e-4: a
    compiled graph may reorder float operations."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    method, twin = twin_methods({"name": "vanilla", "models": ["resnet8"]}, tiny_task(num_classes=3, image_size=8))
    task = method.task
    config = tiny_config({"name": "vanilla"})
    eager = _fast_step(method, config)
    compiled = _fast_step(twin, config, mode="compile", compile_backend=COMPILE_BACKEND)
    try:
        for step in range(3):
            batch = random_batch(task, batch_size=4, seed=step)
            for fast in (eager, compiled):
                fast.set_lr(0.05 * (step + 1))
                fast(batch)
    except Exception as err:  # no C++ toolchain, or an inductor backend that cannot build here
        if "compile" in type(err).__module__ or "inductor" in str(type(err)) or "dynamo" in str(type(err)):
            pytest.skip(f"torch.compile does not work here: {type(err).__name__}")
        raise
    expected = method.state_dict()
    for key, value in twin.state_dict().items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-4, rtol=1e-4), key
    assert abs(eager.drain_logs()[0]["loss"] - compiled.drain_logs()[0]["loss"]) < 1e-4
