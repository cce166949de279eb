"""Weights made by a rule, for golden checks of networks too large to store (a PreAct ResNet-18 is 45 MB of float32).

The generator fills the reference network's state_dict with :func:`rule_weights` of its names and shapes and stores
only those names, shapes and what the reference computed; the test rebuilds the same weights from the stored names
and shapes (the rule is deterministic: one generator per entry, seeded from the entry's own name, no global RNG) and
maps them into peerkd's network. Scales keep a deep network's activations finite: He-scaled convolution and linear
weights, BN affine parameters near (1, 0), running statistics near (0, 1).
"""
from __future__ import annotations

import math
import zlib

import torch


def rule_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` for the reference's ``{name: shape}`` (its state_dict order kept)."""
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = torch.zeros(shape, dtype=torch.int64)
        elif leaf == "running_var":
            out[name] = 0.5 + torch.rand(shape, generator=gen)
        elif leaf == "running_mean":
            out[name] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) > 1:  # a convolution's or linear layer's weight: He-scaled by its fan-in
            out[name] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif leaf == "weight":  # a BN scale
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:  # a bias
            out[name] = 0.1 * torch.randn(shape, generator=gen)
    return out


def pair_names(reference: dict[str, tuple[int, ...]], model: torch.nn.Module) -> dict[str, str]:
    """``{reference state_dict name: model's name}``, paired in state_dict order; every pair must agree in shape (a
    missing or extra layer, or another width, fails here with the first pair that differs)."""
    ours = model.state_dict()
    assert len(ours) == len(reference), f"{len(ours)} state_dict entries here, {len(reference)} in the reference"
    pairs = {}
    for (theirs, shape), (name, mine) in zip(reference.items(), ours.items()):
        assert tuple(shape) == tuple(mine.shape), f"reference {theirs} {tuple(shape)} pairs with {name} " \
                                                  f"{tuple(mine.shape)}"
        pairs[theirs] = name
    return pairs


def map_in_order(reference: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference's state_dict entries under ``model``'s names (:func:`pair_names`), to ``load_state_dict``."""
    pairs = pair_names({k: tuple(v.shape) for k, v in reference.items()}, model)
    return {pairs[k]: v for k, v in reference.items()}
