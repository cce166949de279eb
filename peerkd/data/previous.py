"""Batches that carry the previous step's batch (``DataRequest.previous_batch``; DLB, Shen et al. CVPR 2022).

:class:`PreviousBatchLoader` wraps any training loader with the interface of
:class:`~peerkd.data.device_loader.DeviceLoader` (``epoch(epoch, start_step)``, ``len()``) and sets on every batch
the ``prev_*`` fields of :class:`~peerkd.data.batch.Batch`: the images (every view), labels and positions of the
batch this process yielded one step before, across epoch boundaries (the first step of epoch ``e`` carries the last
batch of epoch ``e - 1``).

Exact from any start: the loaders draw every random number of a step from ``(seed, epoch, step, rank)``, so the
batch before ``(epoch, start_step)`` is rebuilt by asking the loader for that one step again; a resumed run carries
the same previous batch as an uninterrupted one, with nothing stored in the checkpoint. Under DDP each rank's loader
yields its share of every global batch, so each rank carries its own previous share. The run's first step
(epoch 0, step 0) has no previous batch: it carries itself as a placeholder of the same shapes (static shapes for the
compiled and CUDA-graph steps) with ``prev_valid`` 0.0, which a method multiplies into what it takes from it.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from peerkd.data.batch import Batch


def with_previous(batch: Batch, previous: Batch | None) -> Batch:
    """``batch`` with ``previous``'s images, labels and positions as its ``prev_*`` fields (``previous`` None: itself,
    with ``prev_valid`` 0.0)."""
    source = batch if previous is None else previous
    batch.prev_x, batch.prev_y, batch.prev_index = source.x, source.y, source.index
    batch.prev_valid = torch.full((), 0.0 if previous is None else 1.0, device=batch.y.device)
    return batch


class PreviousBatchLoader:
    """A training loader whose every batch carries the one before it (see the module's docstring)."""

    def __init__(self, loader: Any):
        self.loader = loader
        self._last: tuple[int, int, Batch] | None = None  # (epoch, step, batch) of the batch yielded last

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # num_images, batch_size, views, ...: the wrapped loader's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def batch_before(self, epoch: int, start_step: int) -> Batch | None:
        """The batch yielded one step before step ``start_step`` of ``epoch`` (None before the run's first step):
        the one this loader yielded last when it is that one (an epoch following the last), else asked of the
        wrapped loader again (a resume, or an epoch started in the middle)."""
        position = (epoch, start_step - 1) if start_step > 0 else (epoch - 1, len(self.loader) - 1)
        if position[0] < 0:
            return None
        if self._last is not None and self._last[:2] == position:
            return self._last[2]
        return next(iter(self.loader.epoch(*position)))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        previous = self.batch_before(epoch, start_step)
        for step, batch in enumerate(self.loader.epoch(epoch, start_step), start=start_step):
            yield with_previous(batch, previous)  # reads previous.x / y / index; sets batch.prev_*
            previous, self._last = batch, (epoch, step, batch)
