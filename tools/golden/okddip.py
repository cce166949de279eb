"""Golden fixtures from DefangChen/OKDDip-AAAI2020: its networks, its ONE re-implementation, its CL-ILR and OKDDip.

    python tools/golden/okddip.py --repo PATH_TO_OKDDip-AAAI2020

Runs the reference's own modules (``models/model_cifar/resnet.py``, ``vgg.py``, ``resnet_one.py``, ``vgg_one.py``,
``resnet_GL.py``, ``vgg_GL.py``; ``utils.KL_Loss``; ``train_one.get_current_consistency_weight``) on the CPU in fp32
with formula weights (``tests/golden/lineage.py``) and writes:

- ``okddip_networks.npz``: for ``resnet32``, ``resnet110``, ``wide_resnet20_8`` (``resnet.py``) and ``vgg16``
  (``vgg.py``) at 100 classes, full size: state_dict names -> shapes and the parameter count (meta), the eval-mode
  logits of a batch of 2; the parameter counts of the multi-branch forms (ONE with 3 and 4 branches, OKDDip with 4)
  and the dropout of every branch classifier of ``vgg_one.py`` / ``vgg_GL.py`` (meta).
- ``okddip_one.npz``, ``okddip_cl.npz``, ``okddip_gl.npz``: one training step of ``train_one.py`` (ONE: gate,
  ensemble CE, undetached teacher), ``train_one.py --avg --bpscale`` (CL-ILR) and ``train_GL.py`` (OKDDip) on the
  ResNet class of ``resnet_one.py`` / ``resnet_GL.py`` at its smallest depth (one basic block a stage), 4 branches
  (their default), 10 classes, a batch of 8: the outputs, the loss and every parameter's gradient (sketched) at
  epochs 0, 40 and 100, and the ramp-up weight of every epoch 0..100.

The training scripts' loss lines are composed here as the scripts write them (``train_one.py`` ``train()``, the
``args.avg`` and default branches; ``train_GL.py`` ``train()``): CE is ``nn.CrossEntropyLoss()``, the KL their
``utils.KL_Loss(3.0)``, the weight ``alpha * consistency_weight`` with alpha = 1.
"""
from __future__ import annotations

import sys
import types

import common
import torch
from torch import nn

from tests.golden import lineage

REPOSITORY = "DefangChen/OKDDip-AAAI2020"
COMMIT = "c6a05de892fc7d2b6767668548786688a388c2d6"
EPOCHS = (0, 40, 100)  # the ramp-up's start, its middle and past its end (length 80)
CLASSES, BATCH, BRANCHES = 10, 8, 4  # 10 classes keep the KL's 1e-7 epsilon (classes x 1e-7) below the tolerance


def import_reference(root):
    """The reference's modules; ``train_one.py`` parses argv and imports tensorboardX at import time: both stubbed."""
    sys.modules.setdefault("tensorboardX", types.SimpleNamespace(SummaryWriter=None))
    saved, sys.argv = sys.argv, ["train_one.py"]
    try:
        utils = common.import_file(root, "utils.py", "utils")
        cifar = {name: common.import_file(root, f"models/model_cifar/{name}.py", f"okddip_{name}")
                 for name in ("resnet", "vgg", "resnet_one", "vgg_one", "resnet_GL", "vgg_GL")}
        train_one = common.import_file(root, "train_one.py", "train_one")
    finally:
        sys.argv = saved
    return utils, cifar, train_one


def networks(cifar, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    meta, arrays = {"networks": {}, "multibranch_params": {}, "branch_dropout": {}}, {"batch/x": x}
    for file, name in (("resnet", "resnet32"), ("resnet", "resnet110"), ("resnet", "wide_resnet20_8"),
                       ("vgg", "vgg16")):
        model = getattr(cifar[file], name)(num_classes=100)
        shapes = lineage.set_formula(model)
        meta["networks"][name] = {"file": f"models/model_cifar/{file}.py", "shapes": shapes,
                                  "params": sum(p.numel() for p in model.parameters())}
        with torch.no_grad():
            arrays[f"outputs/{name}"] = model.eval()(x)
    for name in ("resnet32", "resnet110", "wide_resnet20_8", "vgg16"):
        one_file, gl_file = ("vgg_one", "vgg_GL") if name == "vgg16" else ("resnet_one", "resnet_GL")
        for branches in (3, 4):
            model = getattr(cifar[one_file], name)(num_classes=100, num_branches=branches)
            meta["multibranch_params"][f"one/{name}/{branches}"] = sum(p.numel() for p in model.parameters())
        extra = {} if name == "vgg16" else {"input_channel": {"resnet32": 64}.get(name, 256)}  # utils.lookup
        model = getattr(cifar[gl_file], name)(num_classes=100, num_branches=4, **extra)
        meta["multibranch_params"][f"okddip/{name}/4"] = sum(p.numel() for p in model.parameters())
        if name == "vgg16":
            meta["branch_dropout"]["okddip"] = {k: m.p for k, m in model.named_modules() if isinstance(m, nn.Dropout)}
            one = cifar["vgg_one"].vgg16(num_classes=100, num_branches=4)
            meta["branch_dropout"]["one"] = {k: m.p for k, m in one.named_modules() if isinstance(m, nn.Dropout)}
    common.write(out, "okddip_networks", REPOSITORY, COMMIT,
                 ["models/model_cifar/resnet.py", "models/model_cifar/vgg.py", "models/model_cifar/resnet_one.py",
                  "models/model_cifar/vgg_one.py", "models/model_cifar/resnet_GL.py", "models/model_cifar/vgg_GL.py"],
                 {"classes": 100, "batch": 2, "mode": "eval", "weights": "formula (tests/golden/lineage.py)",
                  **meta}, arrays)


def step(kind, utils, cifar, train_one, out):
    """One training step of ``kind`` (one / cl / gl) at each epoch of EPOCHS from the same weights."""
    torch.manual_seed(1)
    x = torch.round(torch.randn(BATCH, 3, 32, 32) * 16) / 16  # multiples of 1/16: the fixture compresses
    y = torch.randint(0, CLASSES, (BATCH,))
    basic = cifar["resnet"].BasicBlock
    if kind == "gl":
        model = cifar["resnet_GL"].ResNet(basic, [1, 1, 1], num_classes=CLASSES, num_branches=BRANCHES,
                                          input_channel=64)  # utils.lookup: 64 for the basic-block ResNets
    else:
        model = cifar["resnet_one"].ResNet(basic, [1, 1, 1], num_classes=CLASSES, num_branches=BRANCHES,
                                           avg=kind == "cl", bpscale=kind == "cl")
    shapes, state, arrays = lineage.start_step(model, x, y, lambda e: train_one.get_current_consistency_weight(e, 80))
    criterion, criterion_t = nn.CrossEntropyLoss(), utils.KL_Loss(3.0)
    for epoch in EPOCHS:
        model.load_state_dict(state)
        model.train()
        model.zero_grad()
        weight = train_one.get_current_consistency_weight(epoch, 80)  # start_consistency 0: the ramp from epoch 0
        loss_true, loss_group = 0, 0
        if kind == "gl":  # train_GL.py train()
            output_batch, x_m, x_stu = model(x)
            for i in range(BRANCHES - 1):
                loss_true += criterion(output_batch[:, :, i], y)
                loss_group += criterion_t(output_batch[:, :, i], x_m[:, :, i])
            loss = loss_true + criterion(x_stu, y) + 1.0 * weight * (
                loss_group + criterion_t(x_stu, torch.mean(output_batch, dim=2)))
            outputs = {"pro": output_batch, "x_m": x_m, "x_stu": x_stu}
        else:  # train_one.py train(): --avg (CL-ILR) or the default (ONE)
            output_batch, x_m = model(x)
            for i in range(BRANCHES):
                loss_true += criterion(output_batch[:, :, i], y)
                loss_group += criterion_t(output_batch[:, :, i], x_m[:, :, i] if kind == "cl" else x_m)
            if kind == "one":
                loss_true += criterion(x_m, y)
            loss = loss_true + 1.0 * weight * loss_group
            outputs = {"pro": output_batch, "x_m": x_m}
        loss.backward()
        tag = f"epoch{epoch}"
        arrays[f"loss/{tag}"] = loss.detach()
        arrays[f"state/weight_{tag}"] = torch.tensor(weight)
        if epoch == EPOCHS[0]:
            arrays.update({f"outputs/{k}": v.detach() for k, v in outputs.items()})
        grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}
        arrays.update({f"grads/{tag}/{k}": v for k, v in lineage.sketches(grads).items()})
    files = {"one": ["models/model_cifar/resnet_one.py", "train_one.py", "utils.py"],
             "cl": ["models/model_cifar/resnet_one.py", "train_one.py", "utils.py"],
             "gl": ["models/model_cifar/resnet_GL.py", "train_GL.py", "utils.py"]}[kind]
    options = {"one": "train_one.py defaults (gate, ensemble CE, teacher not detached)",
               "cl": "train_one.py --avg --bpscale (CL-ILR)", "gl": "train_GL.py defaults (OKDDip)"}[kind]
    common.write(out, f"okddip_{kind}", REPOSITORY, COMMIT, files,
                 {"network": "ResNet(BasicBlock, [1, 1, 1])", "classes": CLASSES, "batch": BATCH,
                  "branches": BRANCHES, "temperature": 3.0, "alpha": 1.0, "rampup_length": 80,
                  "epochs": list(EPOCHS), "options": options, "shapes": shapes,
                  "weights": "formula (tests/golden/lineage.py)", "grads": "sketched (tests/golden/lineage.py)"},
                 arrays)


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.use_deterministic_algorithms(True)
    with common.checkout(args.repo, COMMIT) as root, common.cpu_only():
        utils, cifar, train_one = import_reference(root)
        networks(cifar, args.out)
        for kind in ("one", "cl", "gl"):
            step(kind, utils, cifar, train_one, args.out)


if __name__ == "__main__":
    main()
