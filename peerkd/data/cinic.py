"""CINIC-10 (Darlow et al. 2018, "CINIC-10 is not ImageNet or CIFAR-10"): 270,000 32x32 images in 10 classes,
90,000 each in ``train/``, ``valid/`` and ``test/``.

The dataset folder (``data.root`` / ``--data-dir``, else ``$PEERKD_DATA/cinic10``) holds the unpacked archive in
torchvision's ImageFolder layout, ``<split>/<class>/*.png``. The PNGs are read once into uint8 NHWC arrays and cached
beside them as ``cinic10_<split>.npz`` (rebuilt when the count of PNGs changes), so later runs start in seconds; the
arrays go to the same device loader and preprocessing as CIFAR.

Two names choose the training split: ``cinic10`` trains on ``train/`` (the CINIC paper's main protocol, and MDE's),
``cinic10_trainval`` on ``train/`` + ``valid/`` (the paper's alternative); both test on ``test/``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from peerkd.config import DataConfig
from peerkd.data.datasets import ArrayDataset, cache_dir, register_dataset
from peerkd.core.errors import DataError

CINIC_MEAN = (0.47889522, 0.47227842, 0.43047404)  # per-channel mean of the training split (CINIC-10's README)
CINIC_STD = (0.24205776, 0.23828046, 0.25874835)
IMAGE_SIZE = 32
NUM_CLASSES = 10
WHERE = ("put the unpacked CINIC-10 archive there (folders train/, valid/ and test/, each with the 10 class folders "
         "of 32x32 PNGs, from https://datashare.ed.ac.uk/handle/10283/3192), or pass --data-dir to the folder that "
         "holds them")


def _root(config: DataConfig) -> Path:
    return Path(config.root).expanduser() if config.root else cache_dir("cinic10")


def _list_split(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"cinic10: no '{split}/' folder in {root}; {WHERE}")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if len(classes) != NUM_CLASSES:
        raise DataError(f"cinic10: {folder} holds {len(classes)} class folders, expected {NUM_CLASSES}; {WHERE}")
    files = []
    for label, name in enumerate(classes):
        pngs = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() == ".png")
        files += [(p, label) for p in pngs]
    if not files:
        raise DataError(f"cinic10: {folder} holds no PNG images; {WHERE}")
    return classes, files


def _read_pngs(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    for i, (path, label) in enumerate(files):
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)  # a few CINIC images are greyscale
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"cinic10: {path} is not a readable PNG ({err}); replace it from an intact copy of the "
                            "archive") from None
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataError(f"cinic10: {path} is {pixels.shape[1]}x{pixels.shape[0]}, CINIC-10 images are "
                            f"{IMAGE_SIZE}x{IMAGE_SIZE}; {WHERE}")
        images[i], labels[i] = pixels, label
    return images, labels


def load_split(root: Path, split: str, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 NHWC, labels int64, class names)`` of one split, from the npz cache when it is current."""
    found, files = _list_split(root, split)
    if classes is not None and found != classes:
        raise DataError(f"cinic10: the class folders of {root / split} ({', '.join(found)}) differ from those of "
                        f"train/ ({', '.join(classes)}); {WHERE}")
    cache = root / f"cinic10_{split}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as archive:
                images, labels = archive["images"], archive["labels"].astype(np.int64)
            if len(labels) == len(files) and images.shape == (len(files), IMAGE_SIZE, IMAGE_SIZE, 3):
                return images, labels, found
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # a stale or broken cache is rebuilt from the PNGs
    images, labels = _read_pngs(files)
    try:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(cache)
    except OSError:
        pass  # a read-only dataset folder: no cache, the next run reads the PNGs again
    return images, labels, found


def load_cinic(config: DataConfig, train_splits: tuple[str, ...], name: str) -> ArrayDataset:
    root = _root(config)
    if not root.is_dir():
        raise DataError(f"cinic10 not found: {root} does not exist; {WHERE}")
    parts, classes = [], None
    for split in train_splits:
        images, labels, classes = load_split(root, split, classes)
        parts.append((images, labels))
    test_images, test_labels, _ = load_split(root, "test", classes)
    train_images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    train_labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ArrayDataset(name, train_images, train_labels, test_images, test_labels, NUM_CLASSES, CINIC_MEAN,
                        CINIC_STD)


@register_dataset("cinic10", "CINIC-10, 90k train / 90k test 32x32 images, 10 classes (ImageFolder train/valid/test)")
def cinic10(config: DataConfig) -> ArrayDataset:
    return load_cinic(config, ("train",), "cinic10")


@register_dataset("cinic10_trainval", "CINIC-10 trained on train/ + valid/ (180k images), tested on test/")
def cinic10_trainval(config: DataConfig) -> ArrayDataset:
    return load_cinic(config, ("train", "valid"), "cinic10_trainval")
