"""Golden fixture of DKS as winycg/Self-KD-Lib runs it (Sun et al., CVPR 2019), run from a checkout at the pinned
commit.

``selfkdlib_dks``: the reference's ``models/resnet.py`` ``CIFAR_ResNet18_dks`` (the network of the README's DKS row,
``scripts/main_cifar.sh``: ``--arch CIFAR_ResNet18_dks --method DKS``) at 100 classes, its weights made by
``tests/golden/rule_weights.py`` from its state_dict names (29 M parameters: too large to store), then two training
steps on a batch of 2 images of 32 px: each step the reference's own ``methods/dks.py`` ``DKS(net, inputs, targets,
criterion_cls, criterion_div)`` with ``main.py``'s criteria (``nn.CrossEntropyLoss()``, ``utils.DistillKL(T)``, T
read from main.py's ``--T`` default), ``loss = loss_cls + loss_div`` and main.py's optimizer line (SGD, lr 0.1,
momentum 0.9, weight decay 5e-4, Nesterov; its ``--weight-decay`` default) stepped after ``backward``, its learning
rate set before each step by main.py's warm-up (``utils.adjust_lr``: 0.1 x (1 + step) / (5 x 2) for an epoch of two
batches). Stored: the state_dict names and shapes and the parameter count (``meta.case``), each step's three
outputs (backbone, the branch after layer3 ``x1``, the branch after layer2 ``x2``), ``loss_cls``, ``loss_div`` and
the total, the learning rates, the first step's gradients as projections (``tests/golden/network_check.py``) and the
BN running statistics after the second step (as projections too).

    python tools/golden/selfkdlib_dks.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import re
from pathlib import Path

import common
import torch

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "winycg/Self-KD-Lib"
COMMIT = "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
CLASSES, BATCH, STEPS = 100, 2, 2  # the README's CIFAR-100; a batch of 2 keeps the CPU run (and the test) short
GRAD_STEPS = (0,)  # the gradients stored (as projections: computing them for 29 M parameters takes seconds); the
# second step's outputs and losses depend on every first-step gradient through the SGD update


def main_default(root: Path, option: str, kind=float):
    """The default of ``option`` in the reference's ``main.py`` argparse (read from its source)."""
    source = (root / "main.py").read_text()
    found = re.search(rf"add_argument\('{re.escape(option)}'[^\n]*default=([^,\)]+)", source)
    assert found, f"main.py: no {option} argument; the reference changed"
    return kind(found.group(1))


def optimizer_of(root: Path, net: torch.nn.Module, weight_decay: float) -> torch.optim.Optimizer:
    """main.py's optimizer line, read from the reference and run on ``net``."""
    line = next(t.strip() for t in (root / "main.py").read_text().splitlines() if t.strip().startswith("optimizer ="))
    trainable_list = torch.nn.ModuleList([net])
    scope = {"optim": torch.optim, "trainable_list": trainable_list,
             "args": type("Args", (), {"weight_decay": weight_decay})}
    exec(line, scope)  # noqa: S102  (the reference's own line)
    return scope["optimizer"]


def run_steps(root: Path, utils, net: torch.nn.Module, step, output_names: list[str]) -> tuple[dict, dict]:
    """Two steps of ``step(net, x, y) -> (outputs, loss_cls, loss_div)`` with main.py's optimizer and its first-epoch
    learning-rate warm-up (``utils.adjust_lr`` per batch, as main.py's ``train`` calls it, for an epoch of STEPS
    batches); the arrays and the case entry (names, shapes, parameter count, optimizer settings)."""
    shapes = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    net.load_state_dict(rule_weights(dict(shapes)), strict=True)
    weight_decay = main_default(root, "--weight-decay")
    optimizer = optimizer_of(root, net, weight_decay)
    args = type("Args", (), {"init_lr": main_default(root, "--init-lr"),
                             "warmup_epoch": main_default(root, "--warmup-epoch", int)})
    gen = torch.Generator().manual_seed(0)
    arrays = {}
    net.train()
    for s in range(STEPS):
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        arrays.update({f"batch/x{s}": x, f"batch/y{s}": y})
        arrays[f"state/lr/step{s}"] = torch.tensor(utils.adjust_lr(optimizer, 0, args, s, STEPS))
        optimizer.zero_grad()
        outputs, loss_cls, loss_div = step(net, x, y)
        loss = loss_cls + loss_div  # main.py
        loss.backward()
        for name, out in zip(output_names, outputs):
            arrays[f"outputs/step{s}/{name}"] = out.detach().clone()
        arrays.update({f"loss/step{s}/cls": loss_cls.detach(), f"loss/step{s}/div": loss_div.detach(),
                       f"loss/step{s}/total": loss.detach()})
        if s in GRAD_STEPS:
            arrays[f"state/grad_projection/step{s}"] = gradient_projections(common.named_grads(net))
        optimizer.step()
        print(f"step {s}: loss {loss.item():.6f} (cls {loss_cls.item():.6f}, div {loss_div.item():.6f})")
    running = {k: v.float() for k, v in net.state_dict().items() if "running" in k}
    arrays["state/running_projection"] = gradient_projections(running)
    case = {"classes": CLASSES, "batch": BATCH, "steps": STEPS, "size": 32,
            "weights": "tests/golden/rule_weights.py (by name)", "state_dict": shapes,
            "parameters": sum(p.numel() for p in net.parameters()),
            "gradient_names": [k for k, _ in net.named_parameters()], "running_names": list(running),
            "grad_steps": list(GRAD_STEPS),
            "optimizer": {"momentum": 0.9, "weight_decay": weight_decay, "nesterov": True}}
    return case, arrays


def generate(description: str, method_file: str, network: str, make_step, output_names: list[str]) -> None:
    """Write ``selfkdlib_<method>``: the reference's ``models/resnet.py`` ``network`` at CLASSES classes, stepped by
    :func:`run_steps` with the step ``make_step(root, method module, net, (criterion_cls, criterion_div))`` returns
    (with the case entries it adds); main.py's criteria, T read from its ``--T`` default."""
    options = common.arguments(description)
    stem = Path(method_file).stem
    with common.checkout(options.repo, COMMIT, ["models", method_file, "utils.py", "main.py"]) as root, \
            common.cpu_only():
        resnet = common.import_file(root, "models/resnet.py", "selfkdlib_resnet")
        method = common.import_file(root, method_file, f"selfkdlib_{stem}")
        utils = common.import_file(root, "utils.py", "selfkdlib_utils")
        temperature = main_default(root, "--T")
        criteria = torch.nn.CrossEntropyLoss(), utils.DistillKL(temperature)
        torch.manual_seed(0)
        net = getattr(resnet, network)(num_classes=CLASSES)
        step, more = make_step(root, method, net, criteria)
        case, arrays = run_steps(root, utils, net, step, output_names)
        case.update({"network": f"models/resnet.py {network}", "T": temperature, **more})
        common.write(options.out, f"selfkdlib_{stem}", REPOSITORY, COMMIT,
                     ["models/resnet.py", method_file, "utils.py", "main.py"], case, arrays)


def dks_step(root, dks, net, criteria):
    """``DKS(net, inputs, targets, criterion_cls, criterion_div)``; its outputs recorded by a forward hook."""
    recorded = []
    net.register_forward_hook(lambda module, inputs, output: recorded.append(output))

    def step(model, x, y):
        recorded.clear()
        _, loss_cls, loss_div = dks.DKS(model, x, y, *criteria)
        return recorded[0], loss_cls, loss_div
    return step, {}


if __name__ == "__main__":
    generate(__doc__.splitlines()[0], "methods/dks.py", "CIFAR_ResNet18_dks", dks_step,
             ["backbone", "branch_layer3", "branch_layer2"])
