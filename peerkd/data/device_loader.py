"""The device-resident loader of DESIGN.md: the uint8 dataset lives on the device, and shuffling, random crop,
flip and normalisation are batched tensor ops there.

Every random number of an epoch (the permutation, each view's crop offsets and flips) is drawn on the CPU from a
generator seeded by ``(seed, epoch)``, so epoch ``e`` is the same on any device, after any resume, and from any
starting step. Batch shapes are static (the last partial batch is dropped).
Batch mixing (Mixup, CutMix, CutⁿMix; ``peerkd.data.mixing``) draws its numbers per step from ``(seed, epoch,
step, rank)``; class pairs (CS-KD: one partner; BAKE: M of them) draw each sample's same-class partners and their
crops and flips from ``(seed, epoch)``, so both are exact from any start step too. Under DDP every rank draws the same
permutation and takes its share of each global batch, so the global batch keeps the configured size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from peerkd.data import augment
from peerkd.data import mixing as mixing_lib
from peerkd.data.batch import Batch

PAIR_STREAM = 2_000_003  # generator stream of the class-pair partners and their augmentation


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # a distinct 63-bit seed per (seed, epoch, stream), so views and epochs never share random numbers
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(mixed[0]) << 31 ^ int(mixed[1]))


@dataclass
class Split:
    """Which rows of the training arrays train, and which are held out (per-class counts), chosen by the seed."""

    train: np.ndarray
    heldout: np.ndarray


def make_split(labels: np.ndarray, num_classes: int, seed: int, heldout_per_class: int = 0,
               train_subset: int | None = None) -> Split:
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(labels))
    heldout = np.zeros(0, dtype=np.int64)
    if heldout_per_class > 0:
        picks = []
        for c in range(num_classes):
            rows = order[labels[order] == c]
            if len(rows) <= heldout_per_class:
                raise ValueError(f"class {c} has {len(rows)} training images; cannot hold out {heldout_per_class}")
            picks.append(rows[:heldout_per_class])
        heldout = np.sort(np.concatenate(picks))
    keep = np.setdiff1d(order, heldout, assume_unique=True) if heldout.size else order
    if train_subset is not None:
        keep = order[np.isin(order, keep)][:train_subset]
    return Split(np.sort(keep).astype(np.int64), heldout.astype(np.int64))


class DeviceLoader:
    """Training batches from uint8 NHWC images kept on ``device``.

    views: independently augmented copies of each image (``Batch.x`` is ``(V, B, C, H, W)`` when ``views > 1``).
    rank, world: this process's share of every global batch of ``batch_size`` images.
    mixing: a :class:`peerkd.data.mixing.MixingSpec`; None or kind "none" leaves batches unmixed.
    class_pairs: also yield, for every sample, that many other training samples of its class (``Batch.pair_x``:
        block ``j`` of ``B`` rows holds every sample's ``j``-th partner; True counts as 1). The partners of a sample
        are distinct when its class has enough other rows (drawn without replacement), with replacement otherwise.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean, std, device,
                 seed: int = 0, views: int = 1, crop_padding: int = 4, flip: bool = True, channels_last: bool = False,
                 rank: int = 0, world: int = 1, mixing: mixing_lib.MixingSpec | None = None,
                 class_pairs: int = 0):
        if batch_size % world:
            raise ValueError(f"data.batch_size={batch_size} must be divisible by the {world} DDP processes")
        if len(labels) < batch_size:
            raise ValueError(f"the training split has {len(labels)} images, fewer than one batch of {batch_size}; "
                             "lower data.batch_size or enlarge data.train_subset")
        self.device = torch.device(device)
        self.size = images.shape[1]
        self.padding = crop_padding
        self.images = augment.pad_images(torch.as_tensor(images).to(self.device), crop_padding)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.num_images = len(labels)
        self.batch_size, self.views, self.flip = batch_size, views, flip
        self.seed, self.rank, self.world = seed, rank, world
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.channels_last = channels_last
        self.mixing = mixing if mixing is not None else mixing_lib.MixingSpec()
        self.class_pairs = int(class_pairs)
        if self.class_pairs < 0:
            raise ValueError(f"class_pairs={class_pairs}: the number of same-class partners cannot be negative")
        if self.class_pairs:
            self._class_rows = _class_rows(np.asarray(labels))

    def __len__(self) -> int:
        return self.num_images // self.batch_size

    def epoch_randomness(self, epoch: int):
        """The epoch's permutation ``(N,)`` and per view crop offsets ``(V, N, 2)`` and flips ``(V, N)``."""
        perm = torch.randperm(self.num_images, generator=_epoch_generator(self.seed, epoch, 0))
        offsets, flips = [], []
        for v in range(self.views):
            gen = _epoch_generator(self.seed, epoch, 1 + v)
            offsets.append(torch.randint(0, 2 * self.padding + 1, (self.num_images, 2), generator=gen))
            flip = torch.rand(self.num_images, generator=gen) < 0.5
            flips.append(flip if self.flip else torch.zeros_like(flip))
        return perm, torch.stack(offsets), torch.stack(flips)

    def pair_randomness(self, epoch: int):
        """For every training row its ``k = class_pairs`` same-class partner rows ``(N, k)`` (other rows of the class
        when the class has two or more: distinct when it has k others, Floyd's sampling of a k-subset, else drawn
        with replacement), and the partners' crop offsets ``(N, k, 2)`` and flips ``(N, k)``. With k = 1 this draws
        the same numbers in the same order as a single partner always did, so CS-KD's epochs do not change."""
        k = self.class_pairs
        gen = _epoch_generator(self.seed, epoch, PAIR_STREAM)
        order, starts, counts, rank_in_class, label_of = self._class_rows
        draw = torch.rand(self.num_images, k, generator=gen, dtype=torch.float64).numpy()
        count = counts[label_of]
        others = np.maximum(count - 1, 1)
        distinct = others >= k
        picks = np.zeros((self.num_images, k), dtype=np.int64)
        for s in range(k):  # Floyd: step s picks among the first others - k + s + 1 (or all others with replacement)
            top = np.where(distinct, others - k + s, others - 1)
            pick = np.minimum((draw[:, s] * (top + 1)).astype(np.int64), top)
            taken = distinct & (picks[:, :s] == pick[:, None]).any(axis=1)
            picks[:, s] = np.where(taken, top, pick)
        rank, count = rank_in_class[:, None], count[:, None]
        picks = np.where((count > 1) & (picks >= rank), picks + 1, picks)  # skip the row itself
        partner = torch.as_tensor(order[starts[label_of][:, None] + np.where(count > 1, picks, 0)], dtype=torch.int64)
        offsets = torch.randint(0, 2 * self.padding + 1, (self.num_images, k, 2), generator=gen)
        flip = torch.rand(self.num_images, k, generator=gen) < 0.5
        return partner, offsets, flip if self.flip else torch.zeros_like(flip)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from ``start_step`` on (for a resume in the middle of an epoch)."""
        perm, offsets, flips = (t.to(self.device) for t in self.epoch_randomness(epoch))
        local = self.batch_size // self.world
        if self.class_pairs:
            pair_rows, pair_offsets, pair_flips = (t.to(self.device) for t in self.pair_randomness(epoch))
        if self.mixing.active:
            steps = range(start_step, len(self))
            partners, lams, boxes = (t.to(self.device) for t in mixing_lib.sample_epoch(
                self.mixing, self.seed, epoch, steps, local, self.views, self.size, self.size, self.rank))
        for step in range(start_step, len(self)):
            rows = perm[step * self.batch_size + self.rank * local: step * self.batch_size + (self.rank + 1) * local]
            picked = self.images[rows]
            views = [augment.normalize(augment.crop_flip(picked, offsets[v, rows], flips[v, rows], self.size),
                                       self.mean, self.std, self.channels_last) for v in range(self.views)]
            x = views[0] if self.views == 1 else torch.stack(views)
            batch = Batch(x=x, y=self.labels[rows], index=rows)
            if self.mixing.active:
                i = step - start_step
                batch.x, batch.y_b, batch.lam = mixing_lib.apply_mixing(self.mixing.kind, x, batch.y, partners[i],
                                                                    lams[i], boxes[i])
            if self.class_pairs:
                partner = pair_rows[rows].t().reshape(-1)  # (k * B,): block j = every sample's j-th partner
                batch.pair_index = partner
                batch.pair_x = augment.normalize(
                    augment.crop_flip(self.images[partner], pair_offsets[rows].transpose(0, 1).reshape(-1, 2),
                                      pair_flips[rows].t().reshape(-1), self.size),
                    self.mean, self.std, self.channels_last)
            yield batch


def _class_rows(labels: np.ndarray):
    """Rows grouped by class: ``order`` (rows sorted by label, stable), each class's ``starts`` and ``counts``,
    each row's rank within its class and its label."""
    order = np.argsort(labels, kind="stable")
    num_classes = int(labels.max()) + 1 if labels.size else 0
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[order] = np.arange(len(labels)) - starts[labels[order]]
    return order.astype(np.int64), starts, counts.astype(np.int64), rank_in_class, labels.astype(np.int64)


class EvalLoader:
    """Un-augmented batches in dataset order (the last batch may be smaller); used for test and held-out sets."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean, std, device,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.images = torch.as_tensor(images).to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.labels), self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, len(self.labels)), device=self.device)
            x = augment.normalize(self.images[rows], self.mean, self.std, self.channels_last)
            yield Batch(x=x, y=self.labels[rows], index=rows)
