"""Shared test helpers: tiny tasks, random batches, the one-step gradient check and short real runs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from peerkd.config import build_config
from peerkd.data import Batch
from peerkd.methods import TaskInfo, build_method
from peerkd.training.trainer import train

SHARED_CIFAR100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"


def tiny_task(num_classes: int = 5, num_train: int = 64, image_size: int = 32) -> TaskInfo:
    return TaskInfo(num_classes=num_classes, image_size=image_size, num_train=num_train)


def random_batch(task: TaskInfo, batch_size: int = 8, views: int = 1, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, task.image_size, task.image_size)
    x = torch.randn((views, *shape) if views > 1 else shape, generator=gen)
    y = torch.arange(batch_size) % task.num_classes
    index = torch.randperm(task.num_train, generator=gen)[:batch_size]
    return Batch(x=x, y=y, index=index)


def build(method_tree: dict, task: TaskInfo, members: str = "separate"):
    """A method from a ``method:`` config mapping (validated like a config file), its identical members executing as
    ``members`` (a ``trainer.members`` value other than auto: peerkd.models.execution)."""
    from peerkd.models.execution import member_execution

    config = build_config({"method": method_tree})
    with member_execution(members):
        return build_method(config.method.name, config.method.options, task)


def twin_methods(method_tree: dict, task: TaskInfo, seed: int = 0):
    """Two methods with the same initial weights (built once under ``seed``, then copied)."""
    import copy

    torch.manual_seed(seed)
    method = build(method_tree, task)
    return method, copy.deepcopy(method)


def assert_one_step(method, batch: Batch, frozen: tuple[str, ...] = ()) -> torch.Tensor:
    """One forward/backward: the loss is a finite scalar and every trained parameter (except names starting with one
    of ``frozen``) receives a finite, not-all-zero gradient."""
    method.train()
    out = method(batch)
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), out.loss
    for name, value in out.logs.items():
        assert not value.requires_grad, f"log '{name}' must be detached"
    method.zero_grad(set_to_none=True)
    out.loss.backward()
    for name, p in method.named_parameters():
        if not p.requires_grad or name.startswith(frozen):
            continue
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    return out.loss.detach()


TINY_VANILLA = {"name": "vanilla", "models": ["resnet8"]}  # one ResNet-8: the cheapest real run


def tiny_vanilla_config(epochs: int, **kwargs):
    """tiny_config of one ResNet-8 on 128 generated images (4 steps an epoch): the run-folder and checkpoint tests."""
    return tiny_config(TINY_VANILLA, epochs=epochs, train_size=128, **kwargs)


def tiny_teacher_run(run_dir, num_classes: int) -> Path:
    """A trained run to teach KD / Tf-KD self: one epoch of one ResNet-8 on 128 generated images of ``num_classes``
    classes (trained, not good: the methods need its weights, not its accuracy); returns the run folder."""
    config = tiny_config(TINY_VANILLA, epochs=1, train_size=128, num_classes=num_classes, name="teacher")
    config.data.synthetic.test_size = config.data.eval_batch_size  # one evaluation batch
    config.trainer.threads = 1  # a run this small gains nothing from a second thread on a shared machine
    threads = torch.get_num_threads()
    try:
        train(config, run_dir=run_dir)
    finally:
        torch.set_num_threads(threads)  # the trainer sets them for the whole process
    return Path(run_dir)


def tiny_config(method_tree: dict, *, epochs: int = 3, train_size: int = 1200, num_classes: int = 4,
                overrides: tuple[str, ...] = (), **top):
    """A run on generated data small enough for a CPU test (ResNet-8 by default in the method tree)."""
    tree = {
        "name": top.pop("name", "test"),
        "seed": top.pop("seed", 0),
        "data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 200,
                 "synthetic": {"num_classes": num_classes, "train_size": train_size, "test_size": 400,
                                 "noise": 0.3, "distractor": 0.4}},  # easier than the quickstart's: short runs
        "schedule": {"epochs": epochs, "kind": "cosine"},
        "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "log_every": 10, "threads": 2},
        "method": method_tree,
    }
    tree.update(top)
    return build_config(tree, overrides)


def short_run(method_tree: dict, run_dir, **kwargs) -> dict:
    """Train a tiny run and return its summary."""
    return train(tiny_config(method_tree, **kwargs), run_dir=run_dir)


def torchrun_train(config, run_dir, processes: int = 2):
    """``peerkd train`` of ``config`` under ``torchrun --nproc_per_node processes`` on CPU (gloo), one thread each;
    returns the finished subprocess."""
    import json
    import os
    import subprocess
    import sys

    tree = config.to_dict()
    tree["trainer"]["threads"] = 1
    path = Path(run_dir).parent / f"{Path(run_dir).name}.yaml"
    path.write_text(json.dumps(tree))  # JSON is YAML
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), "-m", "peerkd", "train", "-c", str(path), "--out", str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=env)


def cifar100_subset_run(method_tree: dict, run_dir, *, train_images: int = 256, test_images: int = 200,
                        epochs: int = 1, batch_size: int = 32, **top) -> dict:
    """Train ``method_tree`` briefly on a subset of the real CIFAR-100 copy beside the repository (``../shared``) and
    return the run's summary. Skips the calling test where that copy is absent, unless ``CI`` is set (CI has it, so
    there the absence fails). Sizes: images, epochs; small enough for a few seconds with ResNet-8-sized networks."""
    import os

    import pytest

    if not SHARED_CIFAR100.is_dir():
        if os.environ.get("CI"):
            raise AssertionError(f"CI needs the real CIFAR-100 copy at {SHARED_CIFAR100}")
        pytest.skip("../shared/data/cifar100 is absent")
    tree = {
        "name": top.pop("name", "cifar100-subset"),
        "seed": top.pop("seed", 0),
        "data": {"dataset": "cifar100", "root": str(SHARED_CIFAR100), "download": False, "train_subset": train_images,
                 "test_subset": test_images, "batch_size": batch_size, "eval_batch_size": 200},
        "method": method_tree,
        "schedule": {"epochs": epochs, "kind": "cosine"},
        "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "threads": 1},  # a run this small gains nothing from a second thread
    }
    tree.update(top)
    return train(build_config(tree), run_dir=run_dir)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Imported into a test module, runs its tests on one torch thread: steps of small networks on small batches
    gain nothing from a second thread, and on a shared machine lose to its synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
