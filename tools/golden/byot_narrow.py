"""What the two BYOT generators (``byot_release.py``, ``byot_luanyunteng.py``) share: the reference's own network
code run at 1/32 of its width and 10 classes, the reference's training script run for one step on a fixed batch,
and what it computed recorded. Nothing of the reference is copied here; its files are imported from the checkout
at run time.

Why a narrowed run: both references hard-code ResNet widths of 64..512 planes, and a ResNet-18 with its branches has
11-13 M parameters (about 50 MB of weights and 50 MB of gradients), far over a fixture's size. :func:`narrowed_nn`
is a stand-in for the reference module's global ``nn`` whose ``Conv2d`` / ``BatchNorm2d`` / ``Linear`` divide every
channel count that is a multiple of 64 (64, 128, ..., 2048, and the depthwise ``groups``) by ``FACTOR``, and the
model factory is called with ``num_classes=NUM_CLASSES`` (the scripts build 100 outputs); every other line of the
reference runs as written (the same modules in the same order, the same forward, the same names). The full-width
network's parameter names, shapes and count are stored beside it, so the architecture is also checked at the width
the papers train. Narrowed, a fixture holds about 14 k weights, as many gradients and the batch (8 x 3 x 32 x 32):
270-310 KiB.
"""
from __future__ import annotations

import contextlib
import runpy
import sys
import types
from pathlib import Path

import torch
from torch import nn

FACTOR = 32  # 64 -> 2, 128 -> 4, 256 -> 8, 512 -> 16 channels: a ResNet-18 of about 13 k parameters
NUM_CLASSES = 10  # outputs of every classifier in the narrowed run (the fixture's size; the scripts' 100 at full width)
BATCH = 8  # images in the fixture's batch
SEED = 0  # of the weights' perturbation, the batch and the reference's own initialisation


def narrow(channels: int) -> int:
    """``channels // FACTOR`` for the reference's width constants (multiples of 64); input channels (3), class counts
    (10, 100) and already narrowed widths (2..16) unchanged."""
    return channels // FACTOR if channels >= 64 and channels % 64 == 0 else channels


def narrowed_nn() -> types.SimpleNamespace:
    """``torch.nn`` with ``Conv2d``, ``BatchNorm2d`` and ``Linear`` subclasses that narrow their channel counts."""

    class Conv2d(nn.Conv2d):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, **kwargs):
            super().__init__(narrow(in_channels), narrow(out_channels), kernel_size, stride, padding, dilation,
                             narrow(groups), bias, **kwargs)

    class BatchNorm2d(nn.BatchNorm2d):
        def __init__(self, num_features, *args, **kwargs):
            super().__init__(narrow(num_features), *args, **kwargs)

    class Linear(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, **kwargs):
            super().__init__(narrow(in_features), narrow(out_features), bias, **kwargs)

    namespace = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")})
    namespace.Conv2d, namespace.BatchNorm2d, namespace.Linear = Conv2d, BatchNorm2d, Linear
    return namespace


@torch.no_grad()
def perturb_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Random BN scales, shifts and running statistics (the references initialise them to 1 / 0, which would hide a
    BN mapped to the wrong place)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.copy_(0.2 * torch.randn(n, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def batch(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``BATCH`` normal images at 32 px, rounded to multiples of 1/16 (exact in float32; they compress 3x), and
    distinct labels."""
    generator = torch.Generator().manual_seed(SEED + 1)
    x = torch.round(16 * torch.randn(BATCH, 3, 32, 32, generator=generator)) / 16
    y = torch.randperm(num_classes, generator=generator)[:BATCH]
    return x, y


class StepDone(Exception):
    """Raised by :class:`RecordingSGD` at the first ``step()``: the gradients of one step are recorded."""


class Recorder:
    """What one step of the reference computed: its network, the weights before the step, the forward's outputs,
    the loss it back-propagated and the gradients, captured through patched ``torch`` entry points."""

    def __init__(self):
        self.net: nn.Module | None = None
        self.weights: dict[str, torch.Tensor] = {}
        self.outputs = None
        self.loss: torch.Tensor | None = None
        self.grads: dict[str, torch.Tensor] = {}
        self.state_after: dict[str, torch.Tensor] = {}

    def wrap_factory(self, factory, generator: torch.Generator):
        """The reference's model factory (called with ``num_classes=NUM_CLASSES``), recording the network it builds
        (BNs perturbed) and its first forward."""
        def build(*args, **kwargs):
            net = factory(*args, **{**kwargs, "num_classes": NUM_CLASSES})
            perturb_batch_norms(net, generator)
            self.net = net
            self.weights = {k: v.detach().clone() for k, v in net.state_dict().items()}

            def hook(module, inputs, output):
                if self.outputs is None:
                    self.outputs = _detached(output)
            net.register_forward_hook(hook)
            return net
        return build

    @contextlib.contextmanager
    def patched(self):
        """``Tensor.backward`` records the loss; ``torch.optim.SGD.step`` records every gradient and stops the run."""
        recorder, backward, sgd = self, torch.Tensor.backward, torch.optim.SGD

        def recording_backward(tensor, *args, **kwargs):
            recorder.loss = tensor.detach().clone()
            return backward(tensor, *args, **kwargs)

        class RecordingSGD(sgd):
            def step(self, closure=None):
                net = recorder.net
                recorder.grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                                  for k, p in net.named_parameters()}
                recorder.state_after = {k: v.detach().clone() for k, v in net.state_dict().items()}
                for k, v in net.state_dict().items():  # layers the script added after building (adaptation layers)
                    recorder.weights.setdefault(k, v.detach().clone())
                raise StepDone

        torch.Tensor.backward, torch.optim.SGD = recording_backward, RecordingSGD
        try:
            yield
        finally:
            torch.Tensor.backward, torch.optim.SGD = backward, sgd


def run_script(script: Path, argv: list[str], recorder: Recorder, cpu_only) -> None:
    """Run the reference's training script as ``__main__`` with ``argv``, seeded, until its first optimizer step."""
    saved = sys.argv
    sys.argv = [script.name, *argv]
    torch.manual_seed(SEED)
    try:
        with cpu_only(), recorder.patched():
            runpy.run_path(str(script), run_name="__main__")
        raise SystemExit(f"{script.name} ended without an optimizer step")
    except StepDone:
        pass
    finally:
        sys.argv = saved


def step_arrays(recorder: Recorder, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fixture's arrays of one recorded step: weights before it, batch, loss, gradients, BN statistics after."""
    arrays = {f"weights/{k}": v for k, v in recorder.weights.items()}
    arrays.update({f"grads/step/{k}": v for k, v in recorder.grads.items()})
    arrays.update({f"state/after/{k}": v for k, v in recorder.state_after.items() if "running" in k})
    arrays["batch/x"], arrays["batch/y"] = x, y
    arrays["loss/total"] = recorder.loss.reshape(())
    return arrays


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    return [_detached(o) for o in output]


def fake_module(name: str, **attributes) -> types.ModuleType:
    """A stand-in module in ``sys.modules`` (a logger or an API the reference imports that this torch lacks)."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def full_width_shapes(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix/<parameter name>: its shape}`` and ``{prefix/parameters: the count}`` of a full-width network."""
    out = {f"{prefix}/{k}": torch.tensor(list(p.shape), dtype=torch.int64) for k, p in net.named_parameters()}
    out[f"{prefix}/parameters"] = torch.tensor(sum(p.numel() for p in net.parameters()), dtype=torch.int64)
    return out
