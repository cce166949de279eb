"""``DataRequest.previous_batch`` (peerkd/data/previous.py): every batch carries the one before it, across epochs,
from any start step (a resume), per DDP rank; a DLB run interrupted and resumed equals an uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from peerkd.core.method import DataRequest
from peerkd.data.device_loader import DeviceLoader
from peerkd.data.pipeline import build_loaders
from peerkd.data.previous import PreviousBatchLoader
from tests.helpers import tiny_config

IMAGES = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
LABELS = np.arange(40, dtype=np.int64) % 5


def device_loader(rank: int = 0, world: int = 1, views: int = 2) -> DeviceLoader:
    return DeviceLoader(IMAGES, LABELS, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", seed=3,
                        views=views, crop_padding=2, rank=rank, world=world)


def same(a, b) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)


def carried(batch):
    return type("Carried", (), {"x": batch.prev_x, "y": batch.prev_y, "index": batch.prev_index})


def test_every_batch_carries_the_one_before_it_across_epochs():
    plain, wrapped = device_loader(), PreviousBatchLoader(device_loader())
    order = [b for e in range(3) for b in plain.epoch(e)]
    seen = [b for e in range(3) for b in wrapped.epoch(e)]
    assert len(seen) == len(order) == 3 * len(plain) == 15
    first = seen[0]
    assert float(first.prev_valid) == 0.0 and same(carried(first), order[0])  # the run's first step: itself
    for step in range(1, len(seen)):
        assert float(seen[step].prev_valid) == 1.0
        assert same(carried(seen[step]), order[step - 1]), step  # step 5: epoch 1's first carries epoch 0's last
        assert same(seen[step], order[step])  # the batches themselves are the wrapped loader's
    assert first.prev_x.shape == first.x.shape == (2, 8, 3, 8, 8)  # every view, static shapes


@pytest.mark.parametrize("epoch, start", [(0, 3), (1, 0), (2, 4)])
def test_a_start_in_the_middle_carries_what_an_uninterrupted_run_carries(epoch, start):
    straight = [b for e in range(3) for b in PreviousBatchLoader(device_loader()).epoch(e)]
    resumed = list(PreviousBatchLoader(device_loader()).epoch(epoch, start_step=start))  # a fresh loader: a resume
    expected = straight[epoch * 5 + start:(epoch + 1) * 5]
    assert [float(b.prev_valid) for b in resumed] == [1.0] * len(expected)
    for got, want in zip(resumed, expected):
        assert same(carried(got), carried(want)) and same(got, want)


def test_each_ddp_rank_carries_its_own_previous_share():
    for rank in range(2):
        plain = [b for e in range(2) for b in device_loader(rank, 2).epoch(e)]
        seen = [b for e in range(2) for b in PreviousBatchLoader(device_loader(rank, 2)).epoch(e)]
        assert seen[0].x.shape[1] == 4
        for step in range(1, len(seen)):
            assert same(carried(seen[step]), plain[step - 1]), (rank, step)


def test_the_pipeline_wraps_the_training_loader_only_when_asked():
    data = tiny_config({"name": "vanilla"}, train_size=64).data
    asked = build_loaders(data, DataRequest(views=2, previous_batch=True), seed=0, device=torch.device("cpu"),
                          channels_last=False)
    plain = build_loaders(data, DataRequest(), seed=0, device=torch.device("cpu"), channels_last=False)
    assert isinstance(asked.train, PreviousBatchLoader) and not isinstance(plain.train, PreviousBatchLoader)
    assert len(asked.train) == len(plain.train) and asked.train.num_images == plain.train.num_images
    batch = next(iter(asked.train.epoch(0)))
    assert batch.prev_x is not None and next(iter(plain.train.epoch(0))).prev_x is None


@pytest.fixture
def restored_threads():
    """The trainer sets torch's thread count for the process (trainer.threads): give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_image_folder_batches_carry_the_one_before_them_too(tmp_path):
    """The wrapper is the pipeline's for every loader: the image-file loader's batches carry their predecessors,
    across an epoch and from a start in the middle."""
    from peerkd.config import DataConfig
    from tests.data.test_folder_data import write_image_folder

    root = write_image_folder(tmp_path / "data", classes=2, per_class=8)
    config = DataConfig(dataset="imagefolder", root=str(root), batch_size=4, image_size=32, resize=36, workers=0)
    request = DataRequest(views=2, previous_batch=True)
    loaders = build_loaders(config, request, seed=0, device=torch.device("cpu"), channels_last=False)
    plain = build_loaders(config, DataRequest(views=2), seed=0, device=torch.device("cpu"), channels_last=False)
    order = [b for e in range(2) for b in plain.train.epoch(e)]
    seen = [b for e in range(2) for b in loaders.train.epoch(e)]
    assert len(seen) == 8 and float(seen[0].prev_valid) == 0.0
    for step in range(1, 8):
        assert same(carried(seen[step]), order[step - 1]), step
    fresh = build_loaders(config, request, seed=0, device=torch.device("cpu"), channels_last=False)
    assert same(carried(next(iter(fresh.train.epoch(1, start_step=2)))), order[5])


def test_interrupted_and_resumed_dlb_run_matches_an_uninterrupted_one(tmp_path, restored_threads):
    from peerkd.training.checkpoint import load_run
    from peerkd.training.trainer import Trainer, TrainingInterrupted, train

    method = {"name": "dlb", "model": "resnet8"}
    config = lambda: tiny_config(method, epochs=2, train_size=48,  # noqa: E731  (3 steps an epoch)
                                 overrides=("data.synthetic.test_size=32", "data.batch_size=16",
                                            "trainer.threads=1"))
    straight = train(config(), run_dir=tmp_path / "straight")

    def stop(trainer):
        if trainer.global_step == 4:  # epoch 1, step 1: mid-epoch (epoch starts: the loader tests above)
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted):
        Trainer(config(), run_dir=tmp_path / "cut", on_step=stop).fit()
    resumed = Trainer(config(), run_dir=tmp_path / "cut", resume=True).fit()
    assert resumed["keys"] == straight["keys"]
    a, b = load_run(tmp_path / "straight").method.state_dict(), load_run(tmp_path / "cut").method.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["has_previous"]) == 1.0 and a["carried_logits"].shape == (16, 4)


def test_the_bench_reference_loader_carries_the_previous_batch():
    """``peerkd bench``'s reference path (benchmarks/harness.py) keeps the last batch in its loop, as dlb.py keeps
    ``pre_data`` (the device path wraps its loader; tests/benchmarks/test_harness.py compares the two's fields)."""
    from benchmarks import harness as bench

    config = bench.row_config([r for r in bench.all_rows() if r.name.startswith("dlb")][0], bench.CONFIGS, quick=True)
    spec = bench.data_spec(config)
    assert spec.previous_batch and spec.views == 2
    images, labels = bench.synthetic_cifar(32)
    loader = bench.reference_loader(images, labels, spec, batch_size=8, workers=0, pin_memory=False)
    reference = bench.reference_batches(loader, spec, torch.device("cpu"))
    first, second = next(reference), next(reference)
    assert float(first.prev_valid) == 0.0 and float(second.prev_valid) == 1.0
    assert torch.equal(second.prev_x, first.x) and torch.equal(second.prev_y, first.y)
