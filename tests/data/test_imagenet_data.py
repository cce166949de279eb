"""The `imagenet` dataset: ImageFolder layout, the ImageNet recipe with photometric distortion, on a tiny copy."""
import numpy as np
import pytest
import torch
from PIL import Image

from peerkd.config import DataConfig
from peerkd.data import DataError, load_dataset
from peerkd.data.pipeline import build_loaders
from peerkd.methods import DataRequest


def write_tiny_imagenet(root, classes=("n01440764", "n01443537"), per_class=8, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else per_class // 2):
                pixels = rng.integers(0, 90, (size, size + 8, 3))
                pixels[..., c] += 140
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    return root


def test_imagenet_dataset_uses_the_imagenet_recipe(tmp_path):
    root = write_tiny_imagenet(tmp_path / "imagenet")
    data = load_dataset(DataConfig(dataset="imagenet", root=str(root)))
    assert data.name == "imagenet" and data.num_classes == 2
    assert (data.train_transform, data.image_size, data.resize) == ("random_resized_crop", 224, 256)
    assert len(data.train_samples) == 16 and len(data.test_samples) == 8
    config = DataConfig(dataset="imagenet", root=str(root), batch_size=4, image_size=32, resize=36, photometric=True,
                        workers=0, heldout_per_class=1)
    loaders = build_loaders(config, DataRequest(views=2), seed=0, device=torch.device("cpu"), channels_last=False)
    batch = next(iter(loaders.train.epoch(0)))
    assert batch.x.shape == (2, 4, 3, 32, 32) and not torch.equal(batch.x[0], batch.x[1])
    assert loaders.num_train == 14 and loaders.heldout.num_images == 2
    test = list(loaders.test)
    assert sum(len(b.y) for b in test) == 8 and test[0].x.shape[1:] == (3, 32, 32)


def test_imagenet_dataset_explains_a_wrong_layout(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(DataConfig(dataset="imagenet", root=None))
    root = write_tiny_imagenet(tmp_path / "imagenet")
    for child in (root / "val").iterdir():  # the official validation archive: flat files
        for image in child.iterdir():
            image.rename(root / "val" / image.name)
        child.rmdir()
    with pytest.raises(DataError, match="class folders"):
        load_dataset(DataConfig(dataset="imagenet", root=str(root)))
