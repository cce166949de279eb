"""Mixed-sample augmentation as batched tensor operations: Mixup, CutMix and CutⁿMix.

Mixup (Zhang et al., ICLR 2018): ``x = lam * x_i + (1 - lam) * x_k`` with ``lam ~ Beta(alpha, alpha)``.
CutMix (Yun et al., ICCV 2019): a box of the partner image ``x_k`` is pasted into ``x_i``; the box has area
``(1 - lam) * H * W`` before clipping at the border, its centre is uniform over the image, and the label weight is
recomputed from the real (clipped) box: ``lam = 1 - box_area / (H * W)``.
CutⁿMix (Shen et al., "Mixed Sample Augmentation for Online Distillation", eq. 5-7): every peer has its own
augmented view; all views share the partner permutation and ``lam``, but each view's box is placed independently.

Box law (``MixingSpec.box``, ``data.mixing_box``): ``"clip"`` (default) is Yun et al.'s for both CutMix and CutⁿMix
-- paper 003 sec. 2.2 draws each peer's mask "following the previous sampling strategy in [9]" (CutMix), so the two
rows of its Table 1 share one box law (mean pasted area 0.31 of the image, not the nominal 0.5, because the clip
cuts the boxes near the border). CutMix then sets ``lam`` to the real clipped area (Yun et al.'s code); CutⁿMix
must give every peer one label (eq. 6-7, ``lambda^j = lambda``) although its peers' boxes are clipped differently,
so its ``lam`` is the peers' mean real area: unbiased, each peer off by half the difference of the two areas
(J = 2). ``"inside"`` keeps every box wholly inside the image at the nominal size (mean pasted area 0.50, the label
weight exact for every peer).

Every mixed batch keeps its labels sparse: ``Batch.y`` (weight ``lam``), ``Batch.y_b`` = ``y[partner]`` (weight
``1 - lam``); ``peerkd.losses.hard_ce`` computes the mixed cross-entropy from them.

The tensor functions take all their random numbers from the caller (the partner permutation, ``lam``, the boxes),
so the same numbers give the same images on any device. :func:`sample_step` draws those numbers for one step with a
numpy generator seeded by ``(seed, epoch, step, rank)``, which makes a loader's mixing exact from any start step.

Conventions: ``lam`` is the weight of the sample's own label ``y`` (as in ``Batch.lam``); the CutⁿMix paper's
``lambda`` (eq. 6, the weight of the partner's label ``y_k``) is ``1 - lam``. Both are Beta(1, 1) by default, a
symmetric law, so the distribution is the same either way. A box is ``(top, left, height, width)`` in pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("none", "mixup", "cutmix", "cutnmix")
BOX_LAWS = ("clip", "inside")  # Yun et al.'s clipped box (CutMix and paper 003), or a box kept inside the image
MIXING_STREAM = 1_000_003  # generator stream of the mixing numbers (distinct from the loader's crop/flip streams)


# --------------------------------------------------------------------------------------------- tensor operations

def mixup(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[partner]``; ``x`` is ``(B, C, H, W)`` or ``(V, B, C, H, W)`` (every view mixed
    with the same partners and weight), ``partner`` ``(B,)`` int64, ``lam`` a scalar tensor."""
    lam = lam.to(x.dtype)
    return lam * x + (1 - lam) * x.index_select(x.dim() - 4, partner)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``(..., height, width)``, True inside each box ``(..., 4)`` = (top, left, box_h, box_w)."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    top, left, box_h, box_w = (boxes[..., i, None] for i in range(4))
    in_rows = (rows >= top) & (rows < top + box_h)  # (..., H)
    in_cols = (cols >= left) & (cols < left + box_w)  # (..., W)
    return in_rows[..., :, None] & in_cols[..., None, :]


def paste_boxes(x: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix pasting: inside the box the pixels of ``x[partner]``, outside those of ``x``.

    ``x`` ``(B, C, H, W)`` with ``boxes`` ``(4,)`` (one box for the batch), or ``(V, B, C, H, W)`` with ``boxes``
    ``(V, 4)`` (one box per view, the same for every image of that view, as in CutMix's batched code).
    """
    height, width = x.shape[-2:]
    mask = box_masks(boxes, height, width)
    if x.dim() == 5:
        mask = mask[:, None, None]  # (V, 1, 1, H, W)
    return torch.where(mask, x.index_select(x.dim() - 4, partner), x)


def box_area_fraction(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The fraction of the image each box ``(..., 4)`` covers (boxes are already clipped to the image)."""
    return (boxes[..., 2] * boxes[..., 3]).double() / (height * width)


# ---------------------------------------------------------------------------------------------- random numbers

def cutmix_box(rng: np.random.Generator, lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Yun et al.'s box: sides ``sqrt(1 - lam)`` of the image's, centre uniform over the pixels, clipped at the
    border (so the real area can be smaller than ``1 - lam``; the caller recomputes ``lam`` from it)."""
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * ratio), int(width * ratio)
    center_row, center_col = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([center_row - box_h // 2, center_row - box_h // 2 + box_h], 0, height)
    left, right = np.clip([center_col - box_w // 2, center_col - box_w // 2 + box_w], 0, width)
    return int(top), int(left), int(bottom - top), int(right - left)


def inside_boxes(rng: np.random.Generator, lam: float, height: int, width: int, views: int) -> np.ndarray:
    """One box per view, ``(views, 4)``: all of the same size ``round(sqrt(1 - lam) * side)``, each placed uniformly
    among the positions where it lies wholly inside the image, so no box is clipped and every view's real box area
    is the same number of pixels (``box: inside``: eq. 7's shared lambda exact for every peer)."""
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = int(round(height * ratio)), int(round(width * ratio))
    tops = rng.integers(0, height - box_h + 1, size=views)
    lefts = rng.integers(0, width - box_w + 1, size=views)
    return np.stack([tops, lefts, np.full(views, box_h), np.full(views, box_w)], axis=1).astype(np.int64)


@dataclass
class MixingSpec:
    """Which mixing a loader applies and its parameters (from ``data.mixing*`` or the method's request)."""

    kind: str = "none"  # one of KINDS
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha)
    probability: float = 1.0  # chance that a batch is mixed at all (else lam = 1 and partner = identity)
    box: str = "clip"  # box law of cutmix / cutnmix: one of BOX_LAWS (see the module docstring)

    @property
    def active(self) -> bool:
        return self.kind != "none"


@dataclass
class StepMixing:
    """The random numbers of one step: partner ``(B,)``, ``lam`` (own-label weight, exact real area for boxes),
    ``boxes`` ``(V, 4)`` (zero-sized for Mixup or an unmixed batch)."""

    partner: np.ndarray
    lam: float
    boxes: np.ndarray


def step_generator(seed: int, epoch: int, step: int, rank: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, MIXING_STREAM, step, rank]))


def sample_step(spec: MixingSpec, rng: np.random.Generator, batch_size: int, views: int, height: int,
                width: int) -> StepMixing:
    """Draw one step's mixing numbers. Plain CutMix uses one box for every view (the same mixed batch for every
    peer, the paper's Fig. 1 setting); CutⁿMix one box per view with the same lam."""
    identity = StepMixing(np.arange(batch_size), 1.0, np.zeros((views, 4), dtype=np.int64))
    apply = rng.random() < spec.probability
    lam = float(rng.beta(spec.alpha, spec.alpha))
    partner = rng.permutation(batch_size)
    if not apply or spec.kind == "none":
        return identity
    if spec.kind == "mixup":
        return StepMixing(partner, lam, identity.boxes)
    if spec.kind not in ("cutmix", "cutnmix"):
        raise ValueError(f"unknown mixing '{spec.kind}'; choose one of {', '.join(KINDS)}")
    per_view = views if spec.kind == "cutnmix" else 1  # plain CutMix: one box shared by every view
    if spec.box == "inside":
        boxes = inside_boxes(rng, lam, height, width, per_view)
    else:
        boxes = np.array([cutmix_box(rng, lam, height, width) for _ in range(per_view)], dtype=np.int64)
    boxes = np.repeat(boxes, views, axis=0) if per_view == 1 else boxes
    # CutMix's label weight is its box's real area; CutnMix's one weight for every peer (eq. 7) the peers' mean real
    # area (the boxes are the same size unless clipped, and then the mean is the weight closest to every peer's)
    real_lam = 1.0 - float((boxes[:, 2] * boxes[:, 3]).mean()) / (height * width)
    return StepMixing(partner, real_lam, boxes)


def sample_epoch(spec: MixingSpec, seed: int, epoch: int, steps: range, batch_size: int, views: int, height: int,
                 width: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partners ``(S, B)``, ``lam`` ``(S,)`` and boxes ``(S, V, 4)`` for the given steps (each from its own
    ``(seed, epoch, step, rank)`` generator, so any sub-range gives the same numbers for its steps)."""
    draws = [sample_step(spec, step_generator(seed, epoch, step, rank), batch_size, views, height, width)
             for step in steps]
    if not draws:
        return (torch.zeros(0, batch_size, dtype=torch.int64), torch.zeros(0, dtype=torch.float32),
                torch.zeros(0, views, 4, dtype=torch.int64))
    return (torch.as_tensor(np.stack([d.partner for d in draws]), dtype=torch.int64),
            torch.tensor([d.lam for d in draws], dtype=torch.float32),
            torch.as_tensor(np.stack([d.boxes for d in draws]), dtype=torch.int64))


def apply_mixing(kind: str, x: torch.Tensor, y: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
                 boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a batch: returns ``(x_mixed, y_b, lam)``. ``x`` ``(B, C, H, W)`` or ``(V, B, C, H, W)``; ``boxes``
    ``(V, 4)`` (row 0 is used for a 4-D batch)."""
    if kind == "mixup":
        mixed = mixup(x, partner, lam)
    elif kind in ("cutmix", "cutnmix"):
        mixed = paste_boxes(x, partner, boxes if x.dim() == 5 else boxes[0])
    else:
        raise ValueError(f"unknown mixing '{kind}'")
    return mixed, y.index_select(0, partner), lam
