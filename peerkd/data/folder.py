"""Large image datasets read from files (ImageNet, Tiny-ImageNet, the fine-grained sets): torchvision transforms in
DataLoader workers, yielding the same :class:`Batch` as the device loader.

Every random number is derived from ``(seed, epoch, image index, view)``: the epoch's order from ``(seed, epoch)``,
each image's augmentation from a generator seeded by all four, so an epoch is the same whatever the number of
workers, and a resume from any step sees the same images. Images travel as uint8 and are normalised on the device.

Train pipelines (``data.train_transform``):
  random_resized_crop  RandomResizedCrop(image_size, scale 0.08-1, aspect 3/4-4/3) + flip: the ImageNet recipe
  resize_crop          Resize(resize) + RandomCrop(image_size) + flip: the fine-grained recipe
  pad_crop             RandomCrop(image_size, padding=crop_padding) + flip: small images (Tiny-ImageNet 64x64)
``data.photometric: true`` adds the photometric distortion of the ImageNet recipes (KDCL): colour jitter of
brightness, contrast and saturation by 0.4 and AlexNet's PCA lighting noise (std 0.1).
Evaluation: Resize(resize) + CenterCrop(image_size), or the image as it is for ``pad_crop``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from peerkd.data.batch import Batch
from peerkd.data.device_loader import _epoch_generator

TRAIN_TRANSFORMS = ("random_resized_crop", "resize_crop", "pad_crop")

# AlexNet's PCA lighting: eigenvalues and eigenvectors of the ImageNet RGB covariance (Krizhevsky et al. 2012),
# as used by the ImageNet training code that KDCL follows
_PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


@dataclass
class FolderDataset:
    """A dataset of image files: ``(path, label)`` lists for both splits and how to transform them."""

    name: str
    train_samples: list[tuple[str, int]]
    test_samples: list[tuple[str, int]]
    num_classes: int
    train_transform: str = "random_resized_crop"  # the dataset's usual recipe; data.train_transform overrides it
    image_size: int = 224  # side of the training crop and of the evaluated image, pixels
    resize: int = 256  # shorter side before the centre crop at evaluation (and before resize_crop), pixels
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def imagefolder_samples(root: str | Path, name: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, class index)`` for every image under ``root/<class>/``, classes in sorted order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    from peerkd.core.errors import DataError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name}: folder {root} does not exist; it must hold one sub-folder of images per class")
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{name}: {root} is not an image folder ({err}); it must hold one sub-folder of images per "
                        "class") from None
    return samples, classes


class _Lighting:
    """AlexNet-style PCA colour noise on a float CHW tensor in 0..1."""

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        shift = (_PCA_EIGVEC * (alpha * _PCA_EIGVAL)[None, :]).sum(1)
        return (img + shift[:, None, None]).clamp_(0, 1)


def build_transform(kind: str, train: bool, image_size: int, resize: int, crop_padding: int, flip: bool,
                    photometric: bool):
    """A PIL -> uint8 CHW tensor transform."""
    from torchvision import transforms as T

    if not train:
        steps = [] if kind == "pad_crop" else [T.Resize(resize), T.CenterCrop(image_size)]
        return T.Compose(steps + [T.PILToTensor()])
    if kind == "random_resized_crop":
        steps = [T.RandomResizedCrop(image_size)]
    elif kind == "resize_crop":
        steps = [T.Resize(resize), T.RandomCrop(image_size)]
    elif kind == "pad_crop":
        steps = [T.RandomCrop(image_size, padding=crop_padding)]
    else:
        raise ValueError(f"unknown train transform '{kind}'; choose one of {', '.join(TRAIN_TRANSFORMS)}")
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if photometric:
        steps += [T.ColorJitter(0.4, 0.4, 0.4), T.ToTensor(), _Lighting(0.1),
                  T.Lambda(lambda t: (t * 255).round_().to(torch.uint8))]
    else:
        steps.append(T.PILToTensor())
    return T.Compose(steps)


class _Images(torch.utils.data.Dataset):
    """Items ``(views uint8 (V, C, H, W), label, index)``; each view's randomness seeded by (seed, epoch, i, v)."""

    def __init__(self, samples, transform, views: int, seed: int):
        self.samples, self.transform, self.views, self.seed = samples, transform, views, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        image = default_loader(path)
        outs = []
        with torch.random.fork_rng(devices=[]):
            for v in range(self.views):
                state = np.random.SeedSequence([self.seed, self.epoch, i, v]).generate_state(1)[0]
                torch.manual_seed(int(state))
                outs.append(self.transform(image))
        return torch.stack(outs), label, i


class FolderLoader:
    """Training batches from image files; the same interface as :class:`DeviceLoader`."""

    def __init__(self, samples, *, transform, batch_size: int, mean, std, device, seed: int = 0, views: int = 1,
                 workers: int = 8, channels_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"data.batch_size={batch_size} must be divisible by the {world} DDP processes")
        if len(samples) < batch_size:
            raise ValueError(f"the training split has {len(samples)} images, fewer than one batch of {batch_size}")
        self.items = _Images(samples, transform, views, seed)
        self.num_images, self.batch_size, self.views = len(samples), batch_size, views
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.num_images // self.batch_size

    def _batches(self, epoch: int, start_step: int) -> list[list[int]]:
        perm = torch.randperm(self.num_images, generator=_epoch_generator(self.seed, epoch, 0)).tolist()
        local = self.batch_size // self.world
        return [perm[s * self.batch_size + self.rank * local: s * self.batch_size + (self.rank + 1) * local]
                for s in range(start_step, len(self))]

    def _to_batch(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)  # (B, V, C, H, W) uint8
        x = (images.float() - self.mean.unsqueeze(1)) / self.std.unsqueeze(1)
        x = x.transpose(0, 1)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        views = [v.contiguous(memory_format=fmt) for v in x]
        return Batch(x=views[0] if self.views == 1 else torch.stack(views), y=labels.to(self.device),
                     index=index.to(self.device))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.items.epoch = epoch
        loader = torch.utils.data.DataLoader(self.items, batch_sampler=self._batches(epoch, start_step),
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                             generator=_epoch_generator(self.seed, epoch, 999))  # not the global RNG
        for images, labels, index in loader:
            yield self._to_batch(images, labels, index)


class FolderEvalLoader:
    """Evaluation batches in dataset order (the last may be smaller)."""

    def __init__(self, samples, *, transform, batch_size: int, mean, std, device, workers: int = 8,
                 channels_last: bool = False):
        self.inner = FolderLoader.__new__(FolderLoader)
        FolderLoader.__init__(self.inner, samples, transform=transform, batch_size=min(batch_size, len(samples)),
                              mean=mean, std=std, device=device, workers=workers, channels_last=channels_last)
        self.batch_size = batch_size

    @property
    def num_images(self) -> int:
        return self.inner.num_images

    def __len__(self) -> int:
        return -(-self.inner.num_images // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = list(range(self.inner.num_images))
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        loader = torch.utils.data.DataLoader(self.inner.items, batch_sampler=batches, num_workers=self.inner.workers,
                                             pin_memory=self.inner.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(0))  # not the global RNG
        for images, labels, index in loader:
            yield self.inner._to_batch(images, labels, index)
