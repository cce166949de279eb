"""``DataRequest.class_pairs = k`` (BAKE's M images per class): k same-class partners per sample, block-major in
``Batch.pair_x``, distinct where the class has k others, exact from any start step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from peerkd.data.device_loader import DeviceLoader


def _loader(class_pairs, labels=None, seed=3):
    labels = np.arange(96) % 4 if labels is None else labels
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    return DeviceLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", seed=seed,
                        crop_padding=2, class_pairs=class_pairs)


def test_three_partners_per_sample_are_distinct_others_of_the_class_block_major():
    loader = _loader(3)
    batches = list(loader.epoch(0))
    for batch in batches:
        assert batch.pair_x.shape == (48, 3, 8, 8) and batch.pair_index.shape == (48,)
        partners = batch.pair_index.view(3, 16)  # block j: every sample's j-th partner
        assert torch.equal(loader.labels[partners], batch.y.expand(3, 16))
        assert (partners != batch.index).all()
        assert all(len(set(partners[:, i].tolist())) == 3 for i in range(16))  # 23 others: no repeats
    resumed = next(iter(_loader(3).epoch(0, start_step=4)))
    assert torch.equal(resumed.pair_x, batches[4].pair_x) and torch.equal(resumed.pair_index, batches[4].pair_index)
    assert not torch.equal(next(iter(_loader(3).epoch(1))).pair_index, batches[0].pair_index)


def test_partners_cover_the_class_uniformly():
    loader = _loader(2)
    partner, offsets, flips = loader.pair_randomness(0)
    assert partner.shape == (96, 2) and offsets.shape == (96, 2, 2) and flips.shape == (96, 2)
    counts = np.zeros(96)
    for epoch in range(40):
        np.add.at(counts, loader.pair_randomness(epoch)[0].numpy().ravel(), 1)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()  # 80 picks of each row expected


def test_a_class_with_too_few_others_draws_with_replacement():
    labels = np.concatenate([np.zeros(2, np.int64), np.ones(30, np.int64)])  # class 0: one other row
    partner, _, _ = _loader(3, labels).pair_randomness(0)
    assert partner[0].tolist() == [1, 1, 1] and partner[1].tolist() == [0, 0, 0]


def test_negative_count_is_refused():
    with pytest.raises(ValueError, match="class_pairs"):
        _loader(-1)
