"""What the golden modules of the ONE / OKDDip code lineage share (``test_okddip.py``, ``test_one.py`` and their
generators ``tools/golden/okddip.py``, ``tools/golden/one.py``): formula weights, gradient sketches and the mapping
of those codes' parameter names onto peerkd's.

Formula weights: every tensor of the reference's state_dict is set from its *name* and shape by a closed formula
(a sine of the flat index, phased by the name's CRC-32), so the test rebuilds exactly the weights the reference ran
with, from the names and shapes the fixture's meta lists, and no weight has to be stored: a 110-layer ResNet, a
WRN-20-8 or a VGG-16 is held at its full size in a few KiB. The values have the scales of a trained-from-scratch
initialisation (He-like for convolutions and linear layers, BN weights near 1, small biases, positive variances).

Gradient sketches: a gradient of at most ``SKETCH_FULL`` entries is stored whole; a larger one as the L2 norm of each
of its output rows (``#rows``) and every k-th entry of the flat tensor (``#every``, ``SKETCH_EVERY`` of them), so a
scale, a sign, a missing term or a missing layer shows while the fixture stays small. Each part is compared with
``fixture.assert_close`` (1e-5 of its largest |value|).
"""
from __future__ import annotations

import math
import re
import zlib

import torch

SKETCH_FULL = 1024  # entries up to which a gradient is stored whole
SKETCH_EVERY = 128  # entries of the strided sample of a larger gradient


def formula_tensor(name: str, shape, dtype=torch.float32) -> torch.Tensor:
    """The weight ``name`` of ``shape``: a deterministic function of the name and the shape (see the module doc)."""
    count = math.prod(shape) if len(shape) else 1
    phase = (zlib.crc32(name.encode()) % 100003) / 100003 * 2 * math.pi
    wave = torch.sin(torch.arange(count, dtype=torch.float64) * 0.7548776662 + phase).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        value = 0.1 * wave
    elif leaf == "running_var":
        value = 1.0 + 0.5 * wave * wave
    elif leaf == "bias":
        value = 0.1 * wave
    elif leaf == "weight" and len(shape) == 1:  # a BatchNorm's scale
        value = 1.0 + 0.2 * wave
    else:  # a convolution's or a linear layer's weight: std sqrt(2 / fan_in) (the sine's std is 1 / sqrt 2)
        value = wave * 2.0 / math.sqrt(count / shape[0])
    return value.to(dtype)


def formula_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Formula weights for every entry of ``shapes`` (name -> shape), ``num_batches_tracked`` kept at 0."""
    return {k: (torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else formula_tensor(k, v))
            for k, v in shapes.items()}


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    """``{state_dict name: shape}`` of a module."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def set_formula(model: torch.nn.Module) -> dict[str, list[int]]:
    """Load formula weights into a (reference) model; its ``{name: shape}``."""
    shapes = shapes_of(model)
    model.load_state_dict(formula_state(shapes))
    return shapes


def start_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ramp) -> tuple[dict, dict, dict]:
    """A generator's step case: formula weights in ``model``; ``(shapes, the starting state, the arrays begun with
    the batch and ``ramp(e)`` for every epoch 0..100)``."""
    shapes = set_formula(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    arrays = {"batch/x": x, "batch/y": y, "state/rampup": torch.tensor([ramp(e) for e in range(101)])}
    return shapes, state, arrays


def sketch(name: str, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored form of gradient ``grad`` of parameter ``name`` (whole, or ``#rows`` + ``#every``)."""
    grad = grad.detach().double()
    if grad.numel() <= SKETCH_FULL:
        return {name: grad}
    rows = grad.reshape(grad.shape[0], -1).norm(dim=1)
    step = math.ceil(grad.numel() / SKETCH_EVERY)
    return {f"{name}#rows": rows, f"{name}#every": grad.flatten()[::step]}


# gradients that are 0 in exact arithmetic, where both codes hold round-off only: the gate FC's bias feeds a
# BatchNorm in training mode (ONE's ``control_v1`` -> ``bn_v1``), so a shift of it is removed by the batch mean.
# Each is held to 1e-5 of the gradient named beside it (the same layer's weight) instead of its own scale.
ZERO_GRADIENTS = {"control_v1.bias": "control_v1.weight"}


# gradients held to another tolerance than fixture.RTOL, with the reason: the gate FC's weight gradient passes a
# BatchNorm1d over the batch of 8 (ONE's ``bn_v1``), which amplifies float32 round-off: measured against a float64
# run of the same step, Lan's own float32 code is off by 8.4e-6 of the scale and peerkd's by 5.4e-6 (they differ by
# 1.1e-5 from each other; in float64 the two agree to 1.1e-7).
TOLERANCES = {"control_v1.weight": 3e-5}


def assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """``fixture.assert_all_close`` of gradient sketches, with ZERO_GRADIENTS held to their neighbour's scale."""
    from tests.golden import fixture

    assert set(actual) == set(expected), f"{what}: names differ: {sorted(set(actual) ^ set(expected))[:5]}"
    for key, reference in expected.items():
        if key in ZERO_GRADIENTS:
            scale = expected[ZERO_GRADIENTS[key]].double().abs().max().item()
            for side, value in (("peerkd", actual[key]), ("reference", reference)):
                assert value.double().abs().max().item() <= fixture.RTOL * scale, \
                    f"{what} {key}: {side}'s gradient is not 0 (up to round-off)"
        else:
            fixture.assert_close(actual[key].float(), reference, f"{what} {key}",
                                 TOLERANCES.get(key.split("#")[0], fixture.RTOL))


def sketches(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for name, grad in grads.items() for k, v in sketch(name, grad).items()}


# ------------------------------------------------------------------------------------------------ name mapping

# where the reference ResNets' parts go in peerkd (resnet_name's prefixes): a plain backbone; a branch group
# (peerkd ``one`` / ``okddip``, BranchGroup)
PLAIN = {"stem": "stem.", "stages": "stages.{k}.", "branch": "", "classifier": "head.fc."}
BRANCHED = {"stem": "group.net.stem.", "stages": "group.net.trunk_stages.{k}.",
            "branch": "group.net.branches.{i}.stages.0.", "classifier": "group.net.branches.{i}.head.fc."}


def resnet_name(name: str, stem: str, stages: str, branch: str, classifier: str, first_branch: int = 0,
                extra: dict[str, str] | None = None) -> str:
    """A reference ResNet name of the ONE / OKDDip code (``conv1``, ``bn1``, ``layerK``, ``layer3_<i>``,
    ``classifier3_<i>`` / ``classfier3_<i>``, ``fc``, blocks with ``downsample``) as peerkd's. The prefixes:
    ``stem``; ``stages`` (with ``{k}``, the stage index from 0); ``branch`` (with ``{i}``) a branch's stage 3;
    ``classifier`` (with ``{i}``) a branch's classifier, or the network's for ``fc``. ``first_branch`` is the index of
    the reference's first branch (ONE's code counts from 1); ``extra`` maps other module prefixes (gate, attention)."""
    name = name.replace(".downsample.", ".shortcut.")
    for old, new in (extra or {}).items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    if m := re.fullmatch(r"conv1\.(\w+)", name):
        return f"{stem}0.{m[1]}"
    if m := re.fullmatch(r"bn1\.(\w+)", name):
        return f"{stem}1.{m[1]}"
    if m := re.fullmatch(r"layer\d_(\d+)\.(.*)", name):
        return branch.format(i=int(m[1]) - first_branch) + m[2]
    if m := re.fullmatch(r"layer(\d)\.(.*)", name):
        return stages.format(k=int(m[1]) - 1) + m[2]
    if m := re.fullmatch(r"class(?:i)?fier3_(\d+)\.(\w+)", name):
        return classifier.format(i=int(m[1]) - first_branch) + m[2]
    if m := re.fullmatch(r"fc\.(\w+)", name):
        return classifier.format(i=0) + m[1]
    raise KeyError(f"no peerkd name for the reference's {name}")


def vgg_name(name: str) -> str:
    """A reference name of OKDDip's CIFAR VGG (``models/model_cifar/vgg.py``) as ``vgg16_okddip``'s."""
    table = {"conv1": "stem.0", "bn1": "stem.1", "conv2": "stages.0.0.0", "bn2": "stages.0.0.1",
             "classifier.0": "head.hidden.0", "classifier.3": "head.hidden.3", "classifier.6": "head.fc"}
    module, leaf = name.rsplit(".", 1)
    if module in table:
        return f"{table[module]}.{leaf}"
    m = re.fullmatch(r"layer(\d)\.(\d+)", module)
    if m is None:
        raise KeyError(f"no peerkd name for the reference's {name}")
    index = int(m[2])  # conv, BN, ReLU per layer: 3 modules each; the pool is last
    return f"stages.{int(m[1])}.{index // 3}.{index % 3}.{leaf}"


def load_mapped(module: torch.nn.Module, reference: dict[str, torch.Tensor], rename) -> None:
    """Load the reference's state (its names) into ``module`` through ``rename``; every entry of both must meet."""
    mapped = {rename(k): v for k, v in reference.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(mapped) - {"distill_scale"})
    extra = sorted(set(mapped) - set(own))
    assert not missing and not extra, f"names differ: peerkd has {missing[:4]} unmapped, the reference {extra[:4]}"
    for k, v in mapped.items():
        assert own[k].shape == v.shape, f"{k}: peerkd {tuple(own[k].shape)} != reference {tuple(v.shape)}"
    module.load_state_dict({**own, **mapped})


def assert_step_equal(method, fix, rename, outputs, what: str, epochs=(0, 40, 100), rampup_length: float = 80) -> None:
    """The golden step check of the lineage: ``fix``'s formula weights mapped into ``method`` through ``rename``
    (reference name -> peerkd name); the ramp-up of every epoch 0..100; at each epoch of ``epochs`` (from the same
    weights) ``distill_scale``, the loss and every parameter's gradient (sketched); at the first, ``outputs(method,
    x)`` (a dict laid out as the reference's ``outputs/``)."""
    from peerkd.data import Batch
    from peerkd.methods.parts.rampup import sigmoid_rampup
    from tests.golden import fixture

    reference_state = formula_state(fix.meta["case"]["shapes"])
    names = {k: rename(k) for k in reference_state}
    back = {v: k for k, v in names.items()}
    load_mapped(method, reference_state, names.__getitem__)
    start = {k: v.clone() for k, v in method.state_dict().items()}
    x, y = fix["batch/x"], fix["batch/y"]
    ramp = torch.tensor([sigmoid_rampup(e, rampup_length) for e in range(101)])
    fixture.assert_close(ramp, fix["state/rampup"], f"{what} ramp-up")
    for epoch in epochs:
        tag = f"epoch{epoch}"
        method.load_state_dict(start)
        method.train()
        method.zero_grad()
        method.on_epoch_start(epoch, 300)
        fixture.assert_close(method.distill_scale, fix[f"state/weight_{tag}"], f"{what} w({epoch})")
        if epoch == epochs[0]:
            with torch.no_grad():
                fixture.assert_all_close(outputs(method, x), fix.group("outputs"), f"{what} outputs")
            method.load_state_dict(start)  # the forward above moved the BN statistics
        loss = method.forward(Batch(x=x, y=y, index=torch.arange(len(y)))).loss
        loss.backward()
        fixture.assert_close(loss, fix[f"loss/{tag}"], f"{what} loss at epoch {epoch}")
        grads = {back[k]: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in method.named_parameters()}
        assert_grads_close(sketches(grads), fix.group(f"grads/{tag}"), f"{what} gradients at epoch {epoch}")
