"""Datasets by name. Small sets (CIFAR, the generated set) load as uint8 NHWC arrays for the device loader.

A dataset is found in ``data.root`` (CLI ``--data-dir``) as ``train.npz`` / ``test.npz`` (``images`` uint8 NHWC,
``labels``) or in torchvision's layout; otherwise torchvision downloads it into the cache folder
(``$PEERKD_DATA`` or ``~/.cache/peerkd``) when ``data.download`` is true. Anything else stops with a
:class:`DataError` that says what to put where.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerkd.config import DataConfig
from peerkd.core.errors import DataError
from peerkd.core.registry import DATASETS, dataset_descriptions, dataset_names, register_dataset  # noqa: F401
from peerkd.data import augment
from peerkd.data.synthetic import flip_labels, generate


@dataclass
class ArrayDataset:
    name: str
    train_images: np.ndarray  # uint8 (N, H, W, C)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])


def load_dataset(config: DataConfig):
    """An :class:`ArrayDataset` (small sets, loaded whole) or a :class:`peerkd.data.folder.FolderDataset`; the
    loader is registered in :data:`peerkd.core.registry.DATASETS` (a name it does not hold: ConfigError)."""
    return DATASETS.get(config.dataset)(config)


def cache_dir(name: str) -> Path:
    return Path(os.environ.get("PEERKD_DATA", Path.home() / ".cache" / "peerkd")) / name


def _check_arrays(name, where, images, labels, num_classes, image_size):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise DataError(f"{name} in {where}: 'images' must be uint8 of shape (N, {image_size}, {image_size}, 3), "
                        f"found {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{name} in {where}: 'labels' must have one entry per image, found {tuple(labels.shape)} "
                        f"for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name} in {where}: labels must lie in 0..{num_classes - 1}, "
                        f"found {labels.min()}..{labels.max()}")


def load_npz_split(path: Path, name: str, num_classes: int, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as archive:
            images, labels = archive["images"], archive["labels"]
    except KeyError as err:
        raise DataError(f"{name}: {path} lacks the array {err}; it must hold 'images' (uint8 NHWC) and 'labels'") \
            from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{name}: {path} is unreadable ({type(err).__name__}: {err}); replace it with an intact "
                        "copy, or remove it to let torchvision download the dataset") from None
    if labels.dtype.kind not in "iu":  # astype(int64) would truncate 2.7 to class 2 without a word
        raise DataError(f"{name}: {path} holds 'labels' of dtype {labels.dtype}; class labels must be integers "
                        "(store them with labels.astype(numpy.int64) if they are whole numbers)")
    labels = labels.astype(np.int64)
    _check_arrays(name, path, images, labels, num_classes, image_size)
    return images, labels


def _load_cifar(config: DataConfig, name: str, tv_class_name: str, folder: str, num_classes: int, mean, std):
    root = Path(config.root).expanduser() if config.root else cache_dir(name)
    if (root / "train.npz").is_file() or (root / "test.npz").is_file():
        splits = [load_npz_split(root / f"{split}.npz", name, num_classes) if (root / f"{split}.npz").is_file()
                  else None for split in ("train", "test")]
        if any(s is None for s in splits):
            missing = [s for s, v in zip(("train.npz", "test.npz"), splits) if v is None]
            raise DataError(f"{name}: {root} holds only one of train.npz / test.npz; add {missing[0]}")
        (xtr, ytr), (xte, yte) = splits
    else:
        import torchvision

        tv_class = getattr(torchvision.datasets, tv_class_name)
        present = (root / folder).is_dir()
        if not present and not config.download:
            raise DataError(f"{name} not found in {root}: put train.npz and test.npz (images uint8 NHWC, labels) or "
                            f"torchvision's '{folder}/' folder there (--data-dir), or allow data.download=true")
        try:
            train = tv_class(str(root), train=True, download=not present and config.download)
            test = tv_class(str(root), train=False, download=False)
        except RuntimeError as err:  # torchvision's integrity check
            raise DataError(f"{name} in {root} is incomplete or corrupt ({err}); delete '{root / folder}' and run "
                            "again to download it, or point --data-dir at an intact copy") from None
        except OSError as err:  # no network
            raise DataError(f"{name} could not be downloaded into {root} ({err}); put train.npz/test.npz or "
                            f"torchvision's '{folder}/' there and pass --data-dir {root}") from None
        xtr, ytr = np.asarray(train.data, dtype=np.uint8), np.asarray(train.targets, dtype=np.int64)
        xte, yte = np.asarray(test.data, dtype=np.uint8), np.asarray(test.targets, dtype=np.int64)
        _check_arrays(name, root, xtr, ytr, num_classes, 32)
        _check_arrays(name, root, xte, yte, num_classes, 32)
    return ArrayDataset(name, xtr, ytr, xte, yte, num_classes, mean, std)


@register_dataset("cifar10", "CIFAR-10, 50k/10k 32x32 images, 10 classes (torchvision or train.npz/test.npz)")
def cifar10(config: DataConfig) -> ArrayDataset:
    return _load_cifar(config, "cifar10", "CIFAR10", "cifar-10-batches-py", 10, augment.CIFAR10_MEAN,
                       augment.CIFAR10_STD)


@register_dataset("cifar100", "CIFAR-100, 50k/10k 32x32 images, 100 classes (torchvision or train.npz/test.npz)")
def cifar100(config: DataConfig) -> ArrayDataset:
    return _load_cifar(config, "cifar100", "CIFAR100", "cifar-100-python", 100, augment.CIFAR100_MEAN,
                       augment.CIFAR100_STD)


@register_dataset("synthetic", "generated CIFAR-shaped classes (data.synthetic.*), no download; quickstart, tests")
def synthetic(config: DataConfig) -> ArrayDataset:
    opts = config.synthetic
    xtr, ytr = generate(opts.train_size, opts.num_classes, opts.seed, 1, opts.noise, opts.distractor)
    xte, yte = generate(opts.test_size, opts.num_classes, opts.seed, 2, opts.noise, opts.distractor)
    ytr = flip_labels(ytr, opts.label_noise, opts.num_classes, opts.seed)  # training labels only; the test stays clean
    mean = tuple(float(m) for m in (xtr.reshape(-1, 3).mean(0) / 255.0))
    std = tuple(float(s) for s in (xtr.reshape(-1, 3).std(0) / 255.0))
    return ArrayDataset("synthetic", xtr, ytr, xte, yte, opts.num_classes, mean, std)


@register_dataset("imagefolder", "any image-folder dataset: data.root holds train/<class>/* and val/<class>/*")
def imagefolder(config: DataConfig):
    from peerkd.data.folder import FolderDataset, imagefolder_samples

    if not config.root:
        raise DataError("imagefolder: set --data-dir to a folder holding train/<class>/*.jpg and val/<class>/*.jpg")
    root = Path(config.root).expanduser()
    train, classes = imagefolder_samples(root / "train", "imagefolder")
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    test, test_classes = imagefolder_samples(test_dir, "imagefolder")
    if test_classes != classes:
        raise DataError(f"imagefolder: {test_dir} and {root / 'train'} hold different class folders; they must match")
    return FolderDataset("imagefolder", train, test, len(classes))
