"""Datasets, batched augmentation and the device loader."""
import numpy as np
import pytest
import torch

from peerkd.config import DataConfig
from peerkd.data import DataError, DeviceLoader, EvalLoader, load_dataset, make_split
from peerkd.data.augment import crop_flip, cutout, normalize, pad_images
from peerkd.data.synthetic import generate


def numbered_images(n=3, size=4):
    """Images whose pixel (i, r, c, ch) holds a distinct value, so a crop can be traced back."""
    values = np.arange(n * size * size * 3, dtype=np.int64).reshape(n, size, size, 3) % 251 + 1
    return torch.as_tensor(values.astype(np.uint8))


def test_crop_offsets_and_flips_land_where_they_should():
    images = numbered_images(n=2, size=4)
    padded = pad_images(images, 2)  # (2, 8, 8, 3)
    assert padded.shape == (2, 8, 8, 3) and padded[:, :2].sum() == 0
    offsets = torch.tensor([[2, 2], [0, 3]])
    flips = torch.tensor([False, True])
    out = crop_flip(padded, offsets, flips, 4)
    # image 0: offset (2, 2) in padded coordinates is the original image, unflipped
    assert torch.equal(out[0], images[0])
    # image 1: rows -2..1 and columns 1..4 of the original (zero outside), then mirrored left-right
    expected = torch.zeros(4, 4, 3, dtype=torch.uint8)
    for r in range(4):
        for c in range(4):
            src_r, src_c = r - 2, c + 1
            if 0 <= src_r < 4 and 0 <= src_c < 4:
                expected[r, 3 - c] = images[1, src_r, src_c]
    assert torch.equal(out[1], expected)


def test_normalize_and_cutout():
    images = torch.full((1, 2, 2, 3), 51, dtype=torch.uint8)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5])
    x = normalize(images, mean, std, channels_last=False)
    assert x.shape == (1, 3, 2, 2)
    assert torch.allclose(x[0, :, 0, 0], (0.2 - mean) / std)
    x = torch.ones(1, 1, 6, 6)
    out = cutout(x, torch.tensor([[0, 5]]), 4)  # centred at the top-right corner: rows 0..1, cols 3..5 zeroed
    assert out[0, 0, :2, 3:].sum() == 0 and out[0, 0].sum() == 36 - 6


def test_synthetic_is_deterministic_and_balanced():
    a, ya = generate(200, 5, seed=3, split_seed=1)
    b, yb = generate(200, 5, seed=3, split_seed=1)
    c, _ = generate(200, 5, seed=4, split_seed=1)
    assert np.array_equal(a, b) and np.array_equal(ya, yb) and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (200, 32, 32, 3)
    assert np.bincount(ya).tolist() == [40] * 5


def make_loader(views=1, rank=0, world=1, seed=0, n=40, batch=8):
    images, labels = generate(n, 4, seed=0, split_seed=1)
    return DeviceLoader(images, labels, batch_size=batch, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu",
                        seed=seed, views=views, rank=rank, world=world)


def test_loader_is_deterministic_static_and_resumable_mid_epoch():
    loader = make_loader()
    first = list(loader.epoch(3))
    again = list(loader.epoch(3))
    assert len(first) == len(loader) == 5
    assert all(b.x.shape == (8, 3, 32, 32) for b in first)
    for a, b in zip(first, again):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    resumed = list(loader.epoch(3, start_step=2))
    for a, b in zip(first[2:], resumed):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = list(loader.epoch(4))
    assert not torch.equal(first[0].index, other[0].index)
    seen = torch.cat([b.index for b in first])
    assert len(set(seen.tolist())) == 40  # a permutation: every image once


def test_loader_views_are_independent_augmentations_of_the_same_images():
    loader = make_loader(views=3)
    batch = next(iter(loader.epoch(0)))
    assert batch.x.shape == (3, 8, 3, 32, 32) and batch.views == 3
    assert not torch.equal(batch.x[0], batch.x[1])
    single = next(iter(make_loader(views=1).epoch(0)))
    assert torch.equal(single.index, batch.index) and torch.equal(single.x, batch.x[0])


def test_ddp_ranks_split_each_global_batch():
    whole = next(iter(make_loader().epoch(1)))
    parts = [next(iter(make_loader(rank=r, world=2).epoch(1))) for r in range(2)]
    assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)


def test_split_holds_out_per_class_and_subsets():
    labels = np.repeat(np.arange(4), 10)
    split = make_split(labels, 4, seed=0, heldout_per_class=3)
    assert np.bincount(labels[split.heldout]).tolist() == [3, 3, 3, 3]
    assert len(np.intersect1d(split.train, split.heldout)) == 0 and len(split.train) == 28
    sub = make_split(labels, 4, seed=0, train_subset=12)
    assert len(sub.train) == 12
    with pytest.raises(ValueError, match="cannot hold out"):
        make_split(labels, 4, seed=0, heldout_per_class=10)


def test_eval_loader_keeps_order_and_last_partial_batch():
    images, labels = generate(25, 4, seed=0, split_seed=2)
    loader = EvalLoader(images, labels, batch_size=10, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu")
    batches = list(loader)
    assert [len(b.y) for b in batches] == [10, 10, 5]
    assert torch.equal(torch.cat([b.y for b in batches]), torch.as_tensor(labels))


def test_npz_dataset_and_error_messages(tmp_path):
    images, labels = generate(20, 10, seed=0, split_seed=1)
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    np.savez(tmp_path / "test.npz", images=images[:10], labels=labels[:10])
    data = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert data.train_images.shape == (20, 32, 32, 3) and data.num_classes == 10

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="put train.npz and test.npz"):
        load_dataset(DataConfig(dataset="cifar100", root=str(empty), download=False))

    (tmp_path / "test.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="unreadable"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))

    np.savez(tmp_path / "test.npz", images=images[:10], labels=labels[:10] + 100)
    with pytest.raises(DataError, match="labels must lie in"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_label_noise_flips_the_asked_fraction_of_training_labels_only_and_is_seeded():
    from peerkd.config import SyntheticConfig, build_config
    from peerkd.core.errors import ConfigError
    from peerkd.data.synthetic import flip_labels

    _, labels = generate(1000, 10, seed=0, split_seed=1)
    noisy = flip_labels(labels, 0.3, 10, seed=0)
    assert int((noisy != labels).sum()) == 300  # exactly the fraction, each flipped to *another* class
    assert np.array_equal(noisy, flip_labels(labels, 0.3, 10, seed=0))
    assert not np.array_equal(noisy, flip_labels(labels, 0.3, 10, seed=1))
    assert np.array_equal(flip_labels(labels, 0.0, 10, seed=0), labels)
    flipped_to = noisy[noisy != labels]
    assert len(np.unique(flipped_to)) == 10  # uniform over the other classes, not a fixed permutation
    sizes = {"train_size": 400, "test_size": 100, "num_classes": 4}
    clean = load_dataset(DataConfig(dataset="synthetic", synthetic=SyntheticConfig(**sizes)))
    dirty = load_dataset(DataConfig(dataset="synthetic", synthetic=SyntheticConfig(**sizes, label_noise=0.5)))
    assert np.array_equal(clean.train_images, dirty.train_images)
    assert np.array_equal(clean.test_labels, dirty.test_labels)  # the test set stays clean
    assert int((clean.train_labels != dirty.train_labels).sum()) == 200
    with pytest.raises(ConfigError, match="label_noise"):
        build_config({"data": {"synthetic": {"label_noise": 1.5}}})
