"""The unit of data every method receives."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """One training batch.

    x:     ``(B, C, H, W)`` float, or ``(V, B, C, H, W)`` when the method asked for ``V > 1`` augmented views.
    y:     ``(B,)`` int64 class labels.
    index: ``(B,)`` int64 position of each sample in the training split (0 .. num_train - 1), for per-sample memory.
    y_b, lam: set by batch mixing (Mixup / CutMix): the partner labels and the mixing weight of ``y``
           (a scalar tensor, or ``(V,)`` / ``(B,)`` where mixing differs per view or sample). ``lam`` is the
           real weight of ``y``: for CutMix / CutⁿMix, 1 minus the pasted box's area fraction.
    pair_x, pair_index: set when the method asked for ``k`` class pairs (CS-KD: 1, BAKE: M): for every sample k other
           training samples of the same class, ``(k * B, C, H, W)`` augmented independently (rows ``j * B ..
           (j + 1) * B - 1`` are every sample's ``j``-th partner), and their dataset positions ``(k * B,)``.
    prev_x, prev_y, prev_index, prev_valid: set when the method asked for the previous batch (DLB;
           ``peerkd.data.previous``): the batch this process trained on one step before (its ``x`` with every view,
           its labels and positions), across epoch boundaries; ``prev_valid`` a scalar float, 0.0 on the run's first
           step, where there is no previous batch and the ``prev_*`` fields repeat this batch as a placeholder of the
           same shape, else 1.0.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    y_b: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    pair_x: torch.Tensor | None = None
    pair_index: torch.Tensor | None = None
    prev_x: torch.Tensor | None = None
    prev_y: torch.Tensor | None = None
    prev_index: torch.Tensor | None = None
    prev_valid: torch.Tensor | None = None

    @property
    def views(self) -> int:
        return self.x.shape[0] if self.x.dim() == 5 else 1

    def view(self, v: int) -> torch.Tensor:
        """Images of view ``v`` (the only view for a 4-D batch)."""
        return self.x[v] if self.x.dim() == 5 else self.x

    def to(self, device, non_blocking: bool = True) -> "Batch":
        move = (lambda t: None if t is None else t.to(device, non_blocking=non_blocking))
        return replace(self, x=move(self.x), y=move(self.y), index=move(self.index), y_b=move(self.y_b),
                       lam=move(self.lam), pair_x=move(self.pair_x), pair_index=move(self.pair_index),
                       prev_x=move(self.prev_x), prev_y=move(self.prev_y), prev_index=move(self.prev_index),
                       prev_valid=move(self.prev_valid))
