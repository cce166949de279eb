"""Image-file datasets: the DataLoader-based loader yields the same Batch, deterministically."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_config
from peerkd.config import DataConfig
from peerkd.data import DataError, load_dataset
from peerkd.data.folder import FolderLoader, build_transform, imagefolder_samples
from peerkd.data.pipeline import build_loaders
from peerkd.methods import DataRequest
from peerkd.training.trainer import train


def write_image_folder(root, classes=3, per_class=16, size=40, seed=0):
    """Class c is a noisy image dominated by colour channel c."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else per_class // 2):
                pixels = rng.integers(0, 90, (size, size, 3))
                pixels[..., c] += 140
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_imagefolder_dataset_and_loader(tmp_path):
    root = write_image_folder(tmp_path / "data")
    config = DataConfig(dataset="imagefolder", root=str(root), batch_size=8, image_size=32, resize=36, workers=0)
    data = load_dataset(config)
    assert data.num_classes == 3 and len(data.train_samples) == 48 and len(data.test_samples) == 24
    loaders = build_loaders(config, DataRequest(views=2), seed=0, device=torch.device("cpu"), channels_last=False)
    batch = next(iter(loaders.train.epoch(0)))
    assert batch.x.shape == (2, 8, 3, 32, 32) and batch.y.shape == (8,) and batch.index.dtype == torch.int64
    assert not torch.equal(batch.x[0], batch.x[1])  # independent views
    test_batches = list(loaders.test)
    assert sum(len(b.y) for b in test_batches) == 24 and test_batches[0].x.shape[1:] == (3, 32, 32)


def test_folder_loader_is_deterministic_across_workers_and_resumable(tmp_path):
    root = write_image_folder(tmp_path / "data")
    samples, _ = imagefolder_samples(root / "train", "t")
    tf = build_transform("random_resized_crop", True, 32, 36, 4, True, photometric=True)
    common = dict(transform=tf, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", seed=3)
    serial = list(FolderLoader(samples, workers=0, **common).epoch(2))
    parallel = list(FolderLoader(samples, workers=2, **common).epoch(2))
    resumed = list(FolderLoader(samples, workers=0, **common).epoch(2, start_step=3))
    assert len(serial) == 6
    for a, b in zip(serial, parallel):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    for a, b in zip(serial[3:], resumed):
        assert torch.equal(a.x, b.x)
    state = torch.get_rng_state()
    list(FolderLoader(samples, workers=0, **common).epoch(0))
    assert torch.equal(state, torch.get_rng_state())  # item seeding does not disturb the trainer's RNG


def test_training_on_an_image_folder_beats_chance(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=32)
    config = tiny_config({"name": "vanilla", "models": ["resnet8"]}, epochs=3,
                         overrides=("data.dataset=imagefolder", f"data.root={root}", "data.image_size=32",
                                    "data.resize=36", "data.workers=0", "data.batch_size=16",
                                    "data.train_transform=resize_crop"))
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["keys"]["peer0"]["last"]["top1"] > 60.0  # chance is 33 %; the colour makes it easy


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="set --data-dir"):
        load_dataset(DataConfig(dataset="imagefolder"))
