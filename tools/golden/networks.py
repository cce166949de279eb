"""What the network generators (RepDistiller, DLB) share: one reference network's names, shapes and parameter count
at its registered size, and its outputs on a stored batch with weights made by ``tests/golden/rule_weights.py`` (the
networks are too large to store: VGG-16 is 59 MB of float32), in training mode (batch statistics; the running
statistics then move once) and in evaluation mode after that forward.
"""
from __future__ import annotations

import common
import torch

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights


def shapes_of(model: torch.nn.Module) -> list[list]:
    """``[[name, shape], ...]`` in state_dict order (a list: the fixture's meta is JSON with sorted keys)."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def network_case(tag: str, model: torch.nn.Module, x: torch.Tensor, forward=None, gradients: bool = False):
    """``(case entry, arrays)`` for one reference network ``model`` under the peerkd name ``tag``; ``forward(model,
    x)`` returns its logits (default ``model(x)``); with ``gradients`` the gradient of CE(logits, y) over the
    training-mode forward at label y = arange(N) % K is stored too, as projections
    (``state/grad_projection/<tag>``, ``tests/golden/network_check.py``)."""
    forward = forward or (lambda net, inputs: net(inputs))
    shapes = shapes_of(model)
    model.load_state_dict(rule_weights(dict(shapes)), strict=True)
    model.train()
    logits = forward(model, x)
    arrays = {f"outputs/{tag}/train": logits.detach().clone()}
    if gradients:
        y = torch.arange(x.shape[0]) % logits.shape[1]
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        arrays[f"loss/{tag}/ce"] = loss.detach().reshape(1)
        grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in model.named_parameters()}
        arrays[f"state/grad_projection/{tag}"] = gradient_projections(grads)
    model.eval()
    with torch.no_grad():
        arrays[f"outputs/{tag}/eval"] = forward(model, x).clone()
    entry = {"shapes": shapes, "parameters": sum(p.numel() for p in model.parameters()),
             "num_classes": int(logits.shape[1]), "gradients": gradients,
             "gradient_names": [k for k, _ in model.named_parameters()] if gradients else []}
    return entry, arrays


def batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    """A batch of ``n`` 32-px images (standard normal, a seeded generator: no global RNG)."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def generate(name: str, repository: str, commit: str, networks: dict[str, tuple[str, str]], description: str,
             forward=None, logits_only: frozenset[str] = frozenset()) -> None:
    """The generator of ``fixtures/<name>.npz``: ``networks`` maps a peerkd name to (reference file under
    ``models/`` without .py, its factory), each built at 100 classes (CIFAR-100, the tables' dataset); a factory may
    also be a function of the imported module returning the network. ``forward`` as in :func:`network_case`; the
    networks in ``logits_only`` are stored without gradients."""
    args = common.arguments(description)
    torch.manual_seed(0)
    x = batch(4)
    case = {"batch": 4, "size": 32, "weights": "tests/golden/rule_weights.py (by name)", "networks": {}}
    arrays = {"batch/x": x}
    stems = sorted({stem for stem, _ in networks.values()})
    with common.checkout(args.repo, commit) as root, common.cpu_only():
        modules = {stem: common.import_file(root, f"models/{stem}.py", f"{name}_{stem}") for stem in stems}
        for tag, (stem, factory) in networks.items():
            model = factory(modules[stem]) if callable(factory) else getattr(modules[stem], factory)(num_classes=100)
            entry, out = network_case(tag, model, x, forward=forward, gradients=tag not in logits_only)
            label = factory if isinstance(factory, str) else f"{tag} (constructed in the generator)"
            case["networks"][tag] = {"reference": f"models/{stem}.py:{label}", **entry}
            arrays.update(out)
            print(f"{tag}: {entry['parameters']:,} parameters")
    common.write(args.out, name, repository, commit, [f"models/{stem}.py" for stem in stems], case, arrays)
