"""What the two BYOT golden modules share: a reference's weights mapped by name into peerkd's ``byot`` method, one
training step on the fixture's batch, and every output, the loss, every gradient and the BN statistics after the
step compared (``fixture.RTOL``). Each module supplies its name mapping (``to_peerkd``: a reference name -> the
peerkd state_dict key, or ``None`` for a parameter the reference builds but never uses)."""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from peerkd.data.batch import Batch
from tests.golden import fixture
from tests.helpers import build, tiny_task

NameMap = Callable[[str], "str | None"]
GRAD_RTOL = 3e-5  # gradients: the attention gates' and the shallow BNs' weight gradients are sums with cancellation
# (|g| ~ 7e-4 where the network's largest is 1.1), so float32 round-off of another summation order reaches 1e-5 of
# their own max (measured 1.0e-5 on the release's attention1 BN; every other tensor under 6e-6); a wrong setting
# (another recipe, T, hint weight, a missing layer) moves them by 1e-3 or more


RESNET_RULES = [  # both references' torchvision-style ResNet names -> peerkd's CIFAR ResNet (models/cifar_resnet4.py)
    (r"conv1\.(.+)", lambda m: f"net.backbone.stem.0.{m[1]}"),
    (r"bn1\.(.+)", lambda m: f"net.backbone.stem.1.{m[1]}"),
    (r"layer(\d)\.(\d+)\.downsample\.(\d)\.(.+)",
     lambda m: f"net.backbone.stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
    (r"layer(\d)\.(\d+)\.((?:conv|bn)\d)\.(.+)", lambda m: f"net.backbone.stages.{int(m[1]) - 1}.{m[2]}.{m[3]}.{m[4]}"),
]


def name_map(rules: list[tuple[str, Callable]]) -> NameMap:
    """A reference name -> peerkd name function from ``(regex, rename(match))`` rules, the first full match wins;
    a name no rule matches fails the test (a reference parameter nobody accounted for)."""
    def to_peerkd(name: str) -> str | None:
        for pattern, rename in rules:
            match = re.fullmatch(pattern, name)
            if match:
                return rename(match)
        raise AssertionError(f"{name}: no rule maps this reference name")
    return to_peerkd


def byot_method(fix: fixture.Fixture, options: dict):
    """peerkd's ``byot`` at the fixture's narrowed width (``model_options.width`` = 64 / the width divisor)."""
    case = fix.meta["case"]
    task = tiny_task(num_classes=case["num_classes"], num_train=case["batch"], image_size=case["image_size"])
    tree = {"name": "byot", "model": "resnet18", "model_options": {"width": 64 // case["width_divisor"]}, **options}
    return build(tree, task)


def load_reference_weights(method, fix: fixture.Fixture, to_peerkd: NameMap) -> list[str]:
    """Copy every mapped reference weight into ``method``; every peerkd entry must be covered exactly once. Returns
    the reference names without a counterpart (the parameters the reference builds and never uses)."""
    state = method.state_dict()
    mapped, unused = {}, []
    for name, value in fix.group("weights").items():
        target = to_peerkd(name)
        if target is None:
            unused.append(name)
            continue
        assert target in state, f"{name} -> {target}: no such peerkd entry"
        assert target not in mapped, f"{name} and {mapped.get(target)} both map to {target}"
        assert state[target].shape == value.shape, \
            f"{name} {tuple(value.shape)} -> {target} {tuple(state[target].shape)}"
        mapped[target] = name
        state[target] = value.to(state[target].dtype)
    missing = sorted(set(state) - set(mapped))
    assert not missing, f"peerkd entries with no reference counterpart: {missing[:6]}"
    method.load_state_dict(state)
    return unused


def one_step(method, fix: fixture.Fixture) -> dict[str, torch.Tensor]:
    """Train mode, one forward + backward on the fixture's batch: ``logits{k}``, ``feature{k}`` (k = 1 shallowest),
    ``loss``, ``grad/<peerkd name>``, ``state/<peerkd buffer name>`` (the BN statistics after the forward)."""
    method.train()
    method.zero_grad(set_to_none=True)
    seen = {}
    handle = method.net.register_forward_hook(lambda module, inputs, output: seen.setdefault("out", output))
    x, y = fix["batch/x"], fix["batch/y"]
    out = method(Batch(x=x, y=y, index=torch.arange(len(y))))
    handle.remove()
    out.loss.backward()
    logits, features = seen["out"]
    result = {"loss": out.loss.detach()}
    for k, (z, f) in enumerate(zip(logits, features), start=1):
        result[f"logits{k}"], result[f"feature{k}"] = z.detach(), f.detach()
    for name, p in method.named_parameters():
        result[f"grad/{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    for name, b in method.named_buffers():
        result[f"state/{name}"] = b
    return result


def compare_step(fix: fixture.Fixture, result: dict[str, torch.Tensor], to_peerkd: NameMap, unused: list[str],
                 grads: str = "step", loss: str = "loss/total") -> dict[str, float]:
    """Every output, the loss and the BN statistics after the step equal to ``fixture.RTOL``, every gradient to
    ``GRAD_RTOL`` (why: there); the gradients of the reference's unused parameters zero. Returns the max relative
    difference of each group."""
    worst = {"outputs": 0.0, "loss": 0.0, "gradients": 0.0, "bn statistics": 0.0}
    for name, expected in fix.group("outputs").items():
        fixture.assert_close(result[name], expected, f"output {name}")
        worst["outputs"] = max(worst["outputs"], fixture.max_relative_error(result[name], expected))
    fixture.assert_close(result["loss"], fix[loss], loss)
    worst["loss"] = fixture.max_relative_error(result["loss"], fix[loss])
    for name, expected in fix.group(f"grads/{grads}").items():
        if name in unused:
            assert not expected.any(), f"{name}: the reference never uses it, yet it has a gradient"
            continue
        actual = result[f"grad/{to_peerkd(name)}"]
        fixture.assert_close(actual, expected, f"gradient of {name}", rtol=GRAD_RTOL)
        worst["gradients"] = max(worst["gradients"], fixture.max_relative_error(actual, expected))
    for name, expected in fix.group("state/after").items():
        if name in unused:  # a BN the reference never runs
            continue
        actual = result[f"state/{to_peerkd(name)}"]
        fixture.assert_close(actual, expected, f"{name} after the step")
        worst["bn statistics"] = max(worst["bn statistics"], fixture.max_relative_error(actual, expected))
    return worst


def full_width_shapes(fix: fixture.Fixture, prefix: str) -> dict[str, tuple[int, ...]]:
    """The full-width reference's parameter shapes stored under ``state/full/<prefix>/``."""
    return {k: tuple(v.tolist()) for k, v in fix.group(f"state/full/{prefix}").items() if k != "parameters"}
