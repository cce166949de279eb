"""Golden checks of networks shared by the network references (RepDistiller, DLB) and PCL: the reference's weights
(made by ``rule_weights`` from the stored names and shapes) paired in order with peerkd's state_dict, and gradients
checked through fixed random projections (the networks' gradients are too large to store, and hundreds of small
arrays would cost more in the .npz's per-entry headers than in values).

The gradients at ``<tag>`` are one array ``state/grad_projection/<tag>`` of shape (P, DIRECTIONS + 1), a row per
parameter in the order of the list ``meta["case"]...["gradient_names"]``: the gradient's dot products with
:data:`DIRECTIONS` unit vectors drawn from a generator seeded by the parameter's reference name, then its Euclidean
norm. A correct gradient reproduces the row to float32 round-off (about 1e-7 of the norm); a wrong setting (another
layer, scale or target) moves it by a fraction of the norm.
"""
from __future__ import annotations

import zlib

import torch

from tests.golden import fixture

DIRECTIONS = 4  # random unit directions per gradient (each one alone catches a dense error)


def projection(name: str, grad: torch.Tensor) -> torch.Tensor:
    """``[g . u_1, ..., g . u_K, |g|]`` in float64, u_k unit vectors seeded by ``name`` (no global RNG)."""
    gen = torch.Generator().manual_seed(zlib.crc32(("projection/" + name).encode()))
    directions = torch.randn(DIRECTIONS, grad.numel(), generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    flat = grad.detach().double().flatten()
    return torch.cat([directions @ flat, flat.norm().reshape(1)])


def gradient_projections(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (P, DIRECTIONS + 1) array of ``{reference name: gradient}`` (the generators' side; a missing gradient
    counts as zeros)."""
    return torch.stack([projection(name, grad) for name, grad in grads.items()])


def assert_gradients(actual: dict[str, torch.Tensor], names: list[str], stored: torch.Tensor, what: str,
                     rtol: float = fixture.RTOL, floor: float = 0.0) -> None:
    """``actual`` (reference name -> peerkd's gradient) against the stored projections of the parameters ``names``:
    each row to ``rtol`` of that gradient's norm, or of ``floor`` x the largest norm where that is larger (a
    gradient that is zero but for round-off, e.g. of a convolution's bias before a BatchNorm)."""
    assert set(names) == set(actual), f"{what}: parameter names differ: {sorted(set(names) ^ set(actual))[:5]}"
    least = floor * stored[:, -1].max().item() if len(stored) else 0.0
    for name, row in zip(names, stored):
        mine = projection(name, actual[name])
        diff = (mine - row.double()).abs().max().item()
        norm = max(row[-1].item(), least)
        assert diff <= rtol * max(norm, 1e-12), \
            f"{what} {name}: projections differ by {diff:.3g} > {rtol:g} x its norm {norm:.3g}"


def load_in_order(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, str]:
    """Load the reference's state_dict into ``model`` (paired in order, shapes checked, strict) and return
    ``{reference name: peerkd name}``. peerkd's final classifier ``head.fc`` pairs last (the references build it
    last; peerkd's ``MLPClassifierHead`` registers it before its hidden layers)."""
    ours = model.state_dict()
    order = [k for k in ours if not k.startswith("head.fc.")] + [k for k in ours if k.startswith("head.fc.")]
    assert len(order) == len(reference), f"{len(order)} state_dict entries here, {len(reference)} in the reference"
    mapped = {}
    for (theirs, value), name in zip(reference.items(), order):
        assert tuple(value.shape) == tuple(ours[name].shape), \
            f"reference {theirs} {tuple(value.shape)} pairs with {name} {tuple(ours[name].shape)}"
        mapped[theirs] = name
    model.load_state_dict({mapped[k]: v for k, v in reference.items()}, strict=True)
    return mapped


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_network(golden: fixture.Fixture, tag: str, model: torch.nn.Module, gradient_floor: float = 0.0,
                  rtol: float = fixture.RTOL) -> None:
    """peerkd's ``model`` against the fixture's network ``tag`` (case ``networks[tag]``, written by
    ``tools/golden/networks.py``): the reference's state_dict shapes paired in order with peerkd's, the same
    parameter count, then with the reference's rule-made weights loaded the same logits in training mode (and, where
    stored, the same cross-entropy gradients), and in evaluation mode after it (so the BatchNorm statistics moved
    alike). ``rtol``: the logits' tolerance, where a test states why its network needs another."""
    from tests.golden.rule_weights import rule_weights

    entry = golden.meta["case"]["networks"][tag]
    assert parameter_count(model) == entry["parameters"], \
        f"{tag}: {parameter_count(model):,} parameters, the reference has {entry['parameters']:,}"
    names = load_in_order(model, rule_weights(dict(entry["shapes"])))  # [[name, shape], ...] in order
    x = golden["batch/x"]
    model.train()
    logits = model(x)
    fixture.assert_close(logits, golden[f"outputs/{tag}/train"], f"{tag} training-mode logits", rtol=rtol)
    if entry["gradients"]:
        y = torch.arange(x.shape[0]) % logits.shape[1]
        loss = torch.nn.functional.cross_entropy(logits, y)
        fixture.assert_close(loss.reshape(1), golden[f"loss/{tag}/ce"], f"{tag} cross-entropy")
        loss.backward()
        params = dict(model.named_parameters())
        grads = {ref: params[ours].grad for ref, ours in names.items() if ours in params}
        assert_gradients(grads, entry["gradient_names"], golden[f"state/grad_projection/{tag}"], f"{tag} gradient",
                         floor=gradient_floor)
    model.eval()
    with torch.no_grad():
        fixture.assert_close(model(x), golden[f"outputs/{tag}/eval"], f"{tag} evaluation-mode logits", rtol=rtol)
