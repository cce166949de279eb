"""Batched augmentation on the device: random crop with zero padding, horizontal flip, normalisation, cutout.

Every random number comes from the caller (offsets, flip flags), so the same numbers give the same images on any
device, and a loader can derive them from (seed, epoch) and resume mid-epoch exactly.
"""
from __future__ import annotations

import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad NHWC uint8 images by ``padding`` pixels on each side (done once per dataset)."""
    if padding == 0:
        return images
    return torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))


def crop_flip(padded: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``size`` x ``size`` windows from padded NHWC images and flip some of them, in one gather.

    padded:  ``(B, H + 2p, W + 2p, C)``; offsets: ``(B, 2)`` int (row, column) of each window's top-left corner;
    flips:   ``(B,)`` bool, True mirrors the window left-right. Returns ``(B, size, size, C)``.
    """
    ar = torch.arange(size, device=padded.device)
    rows = offsets[:, 0:1] + ar  # (B, size)
    cols = torch.where(flips[:, None], size - 1 - ar, ar) + offsets[:, 1:2]  # (B, size)
    b = torch.arange(padded.shape[0], device=padded.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]]


def normalize(images_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in the layout asked for, ``(x / 255 - mean) / std``."""
    x = images_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    x = x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def cutout(x: torch.Tensor, centers: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square (clipped at the border) centred at ``centers`` ``(B, 2)`` of each image
    (DeVries & Taylor 2017), after normalisation as in their code."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    half = size // 2
    in_rows = (rows >= centers[:, 0:1] - half) & (rows < centers[:, 0:1] - half + size)
    in_cols = (cols >= centers[:, 1:2] - half) & (cols < centers[:, 1:2] - half + size)
    mask = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)
