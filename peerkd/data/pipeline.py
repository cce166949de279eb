"""From a data config and a method's request to the loaders a run needs.

``build_loaders`` is the one place that knows which loader serves which kind of dataset: array datasets (CIFAR,
the generated set) go to the device-resident loader, image-file datasets to the DataLoader-based folder loader.
Every loader yields :class:`peerkd.data.Batch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from peerkd.config import DataConfig
from peerkd.core.errors import ConfigError
from peerkd.data import augment
from peerkd.data.datasets import load_dataset
from peerkd.data.device_loader import DeviceLoader, EvalLoader, make_split
from peerkd.data.folder import TRAIN_TRANSFORMS, FolderDataset, FolderEvalLoader, FolderLoader, build_transform
from peerkd.data.mixing import MixingSpec
from peerkd.data.previous import PreviousBatchLoader


@dataclass
class Loaders:
    train: Any  # .epoch(epoch, start_step) -> iterator of Batch; len() = steps per epoch
    test: Any  # iterable of Batch in dataset order
    heldout: Any  # like test, over the held-out split; None when nothing is held out
    num_classes: int
    image_size: int
    num_train: int
    mean: tuple = (0.0, 0.0, 0.0)  # the normalisation the loaders apply, (x / 255 - mean) / std, per RGB channel
    std: tuple = (1.0, 1.0, 1.0)


def normalization(config: DataConfig, dataset_mean, dataset_std):
    if config.normalize == "imagenet":
        return augment.IMAGENET_MEAN, augment.IMAGENET_STD
    if config.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return dataset_mean, dataset_std


def mixing_spec(config: DataConfig, request) -> MixingSpec:
    """The mixing a run applies: the method's request (e.g. CutⁿMix's own) or else ``data.mixing``."""
    requested = getattr(request, "mixing", "") or ""
    if requested and config.mixing not in ("none", requested):
        raise ConfigError(f"data.mixing: the method mixes its batches with '{requested}'; leave data.mixing at "
                          f"none (or set it to '{requested}') instead of '{config.mixing}'")
    return MixingSpec(requested or config.mixing, config.mixing_alpha, config.mixing_prob, config.mixing_box)


def check_subsets(config: DataConfig, name: str, num_train: int, num_test: int | None) -> None:
    """Refuse a ``train_subset`` / ``test_subset`` larger than the split it is drawn from (known once the dataset is
    loaded, before any training): silently using fewer images would misreport the run. ``num_test`` None: the
    test split is not evaluated (``data.eval_split: heldout``), and not looked at."""
    for key, asked, available, what in (("train_subset", config.train_subset, num_train, "training images"),
                                        ("test_subset", config.test_subset, num_test, "test images")):
        if asked is not None and available is not None and asked > available:
            raise ConfigError(f"data.{key}: {asked} asked for, but {name} has {available} {what}"
                              f"{' after the held-out split' if key == 'train_subset' else ''}; use at most "
                              f"{available}, or leave data.{key} unset for all")


def check_eval_split(config: DataConfig, request) -> None:
    """``data.eval_split: heldout`` needs a held-out split of the config's own that no method trains on: a method
    that asks for one (KDCL-General fits its ensemble weights on it) would be scored on data it has used."""
    if config.eval_split != "heldout":
        return
    if config.heldout_per_class <= 0:
        raise ConfigError("data.eval_split: heldout needs a held-out split; set data.heldout_per_class to the images "
                          "per class to hold out of training (e.g. 50)")
    if request.heldout_per_class > 0:
        raise ConfigError("data.eval_split: the method fits on the held-out split itself (its data request asks for "
                          f"{request.heldout_per_class} per class), so it cannot also score the run; use "
                          "data.eval_split=test")


def check_split(config: DataConfig, request, seed: int) -> None:
    """The held-out split and training subset a run of ``config`` would make, checked as :func:`build_loaders`
    checks them (ConfigError), without building a loader and without looking at the test split (``peerkd tune``
    checks its trials' split before any run starts)."""
    data = load_dataset(config)
    check_eval_split(config, request)
    if isinstance(data, FolderDataset):
        labels, name = np.array([label for _, label in data.train_samples], dtype=np.int64), data.name
    else:
        labels, name = data.train_labels, data.name
    try:
        split = make_split(labels, data.num_classes, seed, max(config.heldout_per_class, request.heldout_per_class),
                           config.train_subset)
    except ValueError as err:
        raise ConfigError(f"data.heldout_per_class: {err}") from None
    check_subsets(config, name, len(labels) - len(split.heldout), None)


def build_loaders(config: DataConfig, request, *, seed: int, device: torch.device, channels_last: bool,
                  rank: int = 0, world: int = 1) -> Loaders:
    loaders = _build_loaders(config, request, seed=seed, device=device, channels_last=channels_last, rank=rank,
                             world=world)
    if getattr(request, "previous_batch", False):  # every batch carries the one before it (peerkd/data/previous.py)
        loaders.train = PreviousBatchLoader(loaders.train)
    return loaders


def _build_loaders(config: DataConfig, request, *, seed: int, device: torch.device, channels_last: bool,
                   rank: int, world: int) -> Loaders:
    data = load_dataset(config)
    if isinstance(data, FolderDataset):
        return _folder_loaders(data, config, request, seed=seed, device=device, channels_last=channels_last,
                               rank=rank, world=world)
    check_eval_split(config, request)
    heldout_per_class = max(config.heldout_per_class, request.heldout_per_class)
    try:
        split = make_split(data.train_labels, data.num_classes, seed, heldout_per_class, config.train_subset)
    except ValueError as err:
        raise ConfigError(f"data.heldout_per_class: {err}") from None
    check_subsets(config, data.name, len(data.train_labels) - len(split.heldout),
                  len(data.test_labels) if config.eval_split == "test" else None)  # heldout: not looked at
    mean, std = normalization(config, data.mean, data.std)
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last)
    try:
        train = DeviceLoader(data.train_images[split.train], data.train_labels[split.train],
                             batch_size=config.batch_size, seed=seed, views=request.views,
                             crop_padding=config.crop_padding, flip=config.flip, rank=rank, world=world,
                             mixing=mixing_spec(config, request),
                             class_pairs=getattr(request, "class_pairs", False), **common)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    test = None  # data.eval_split: heldout: no test loader, so not one test image or label is read
    if config.eval_split == "test":
        test_images, test_labels = data.test_images, data.test_labels
        if config.test_subset:
            test_images, test_labels = test_images[:config.test_subset], test_labels[:config.test_subset]
        test = EvalLoader(test_images, test_labels, batch_size=config.eval_batch_size, **common)
    heldout = EvalLoader(data.train_images[split.heldout], data.train_labels[split.heldout],
                         batch_size=config.eval_batch_size, **common) if heldout_per_class else None
    return Loaders(train, test, heldout, data.num_classes, data.image_size, len(split.train), tuple(mean), tuple(std))


def _folder_loaders(data: FolderDataset, config: DataConfig, request, *, seed, device, channels_last, rank,
                    world) -> Loaders:
    if mixing_spec(config, request).active or request.class_pairs:
        raise ConfigError(f"data.mixing / class pairs are implemented for array datasets (CIFAR, CINIC, synthetic), "
                          f"not yet for the image files of '{data.name}'; set data.mixing=none")
    kind = data.train_transform if config.train_transform == "default" else config.train_transform
    if kind not in TRAIN_TRANSFORMS:
        raise ConfigError(f"data.train_transform: '{kind}' is not one of default, {', '.join(TRAIN_TRANSFORMS)}")
    size, resize = config.image_size or data.image_size, config.resize or data.resize
    check_eval_split(config, request)
    labels = np.array([label for _, label in data.train_samples], dtype=np.int64)
    heldout_per_class = max(config.heldout_per_class, request.heldout_per_class)
    try:
        split = make_split(labels, data.num_classes, seed, heldout_per_class, config.train_subset)
    except ValueError as err:
        raise ConfigError(f"data.heldout_per_class: {err}") from None
    check_subsets(config, data.name, len(labels) - len(split.heldout),
                  len(data.test_samples) if config.eval_split == "test" else None)  # heldout: not looked at
    mean, std = normalization(config, data.mean, data.std)
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last, workers=config.workers)
    train_tf = build_transform(kind, True, size, resize, config.crop_padding, config.flip, config.photometric)
    eval_tf = build_transform(kind, False, size, resize, config.crop_padding, config.flip, False)
    try:
        train = FolderLoader([data.train_samples[i] for i in split.train], transform=train_tf,
                             batch_size=config.batch_size, seed=seed, views=request.views, rank=rank, world=world,
                             **common)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    test = None  # data.eval_split: heldout: no test loader
    if config.eval_split == "test":
        test_samples = data.test_samples[:config.test_subset] if config.test_subset else data.test_samples
        test = FolderEvalLoader(test_samples, transform=eval_tf, batch_size=config.eval_batch_size, **common)
    heldout = FolderEvalLoader([data.train_samples[i] for i in split.heldout], transform=eval_tf,
                               batch_size=config.eval_batch_size, **common) if heldout_per_class else None
    return Loaders(train, test, heldout, data.num_classes, size, len(split.train), tuple(mean), tuple(std))
