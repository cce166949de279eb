"""CINIC-10 from a tiny generated ImageFolder tree of PNGs."""
import numpy as np
import pytest
from PIL import Image

from peerkd.config import DataConfig
from peerkd.data import DataError, load_dataset

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_tree(root, per_class=2, splits=("train", "valid", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = np.full((32, 32, 3), label * 20 + k, dtype=np.uint8)
                pixels[0, 0] = rng.integers(0, 255, 3)
                mode = "L" if (label == 3 and k == 0) else "RGB"  # CINIC holds a few greyscale images
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(folder / f"{split}_{k}.png")


def test_cinic_reads_the_tree_and_caches_it(tmp_path):
    make_tree(tmp_path)
    data = load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    assert data.train_images.shape == (20, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 32, 32, 3) and data.num_classes == 10
    assert sorted(set(data.train_labels.tolist())) == list(range(10))
    first_ship = int(np.flatnonzero(data.train_labels == CLASSES.index("ship"))[0])
    assert data.train_images[first_ship, 5, 5, 1] == CLASSES.index("ship") * 20  # the pixels of its PNG
    assert (tmp_path / "cinic10_train.npz").is_file() and (tmp_path / "cinic10_test.npz").is_file()
    # the second load comes from the cache: remove the PNGs' content but keep their names
    for png in (tmp_path / "train").rglob("*.png"):
        png.write_bytes(b"not a png")
    again = load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    np.testing.assert_array_equal(again.train_images, data.train_images)


def test_cinic_trainval_adds_the_valid_split(tmp_path):
    make_tree(tmp_path)
    data = load_dataset(DataConfig(dataset="cinic10_trainval", root=str(tmp_path)))
    assert data.train_images.shape[0] == 40 and data.test_images.shape[0] == 20


def test_cinic_missing_and_corrupt_data_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="train/"):
        load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    make_tree(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="test/"):
        load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    make_tree(tmp_path, splits=("test",))
    (tmp_path / "test" / "dog" / "test_0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="test_0.png"):
        load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
