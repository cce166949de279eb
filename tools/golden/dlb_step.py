"""Golden fixture of Meta-knowledge-Lab/DLB's training step (Shen et al., CVPR 2022), run from a checkout at the
pinned commit: the reference's own ``dlb.train_one_epoch`` for two epochs of two steps (batch 4; two augmented views
per image, stacked ``(B, 2, C, H, W)`` as ``my_dataloader.py`` does; 8 images, a new order every epoch),
``pre_data`` / ``pre_out`` handed from the first epoch to the second as its ``train()`` does, so four steps: the
first cross-entropy alone, the third the first of an epoch distilling from the last step of the epoch before.

Network: the reference's own ``models/resnet.py`` ``ResNet(BasicBlock, [1, 1, 1])`` (its resnet32 at one block a
stage, the smallest its class builds; 10 classes), weights made by ``tests/golden/rule_weights.py`` (the test rebuilds
them from the stored names and shapes). Optimizer: SGD as ``dlb.py``'s ``__main__`` builds it (lr, its ``--momentum``
0.9, Nesterov, its ``--weight-decay`` 5e-4). ``--T 3 --alpha 1`` (the paper's setting; ``dlb.py`` has no default).
Stored per step: the loss (read from the reference's ``loss_recorder``), every network output in call order (the
current batch's view 0, then the previous batch's view 1; read through a wrapper of ``net.forward``, which
``train_one_epoch`` calls directly), the gradient of every parameter as it reaches the
optimizer (projections, ``tests/golden/network_check.py``); and ``pre_out`` after each epoch.

Patched to run on CPU: ``common.cpu_only()``; ``dlb.py`` parses ``sys.argv`` and creates ``./dlb/...`` at import (a
command line is set, and the import runs inside the temporary checkout); ``utils.accuracy`` (a logged metric) is
replaced by zeros.

    python tools/golden/dlb_step.py --repo /work/.mirror/Meta-knowledge-Lab+DLB/repo
"""
from __future__ import annotations

import os
import sys

import common
import torch
from networks import shapes_of

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "Meta-knowledge-Lab/DLB"
COMMIT = "8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0"
FILES = ["dlb.py", "my_dataloader.py", "models/resnet.py"]
EPOCHS, STEPS, BATCH, CLASSES, TEMPERATURE, ALPHA, LR = 2, 2, 4, 10, 3.0, 1.0, 0.1


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    gen = torch.Generator().manual_seed(0)
    # two views of each of the 8 images of the training set, float16 values (stored as float16: a smaller fixture)
    images = torch.randn(STEPS * BATCH, 2, 3, 32, 32, generator=gen).half()
    labels = torch.randint(0, CLASSES, (STEPS * BATCH,), generator=gen)
    orders = [torch.randperm(STEPS * BATCH, generator=gen) for _ in range(EPOCHS)]  # a new order every epoch
    arrays = {"batch/images": images, "batch/labels": labels}
    images = images.float()
    here = os.getcwd()
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only():
        os.chdir(root)  # dlb.py makes ./dlb/<dataset>/<name> at import
        try:
            sys.argv = ["dlb.py", "--model_names", "resnet32", "--T", str(TEMPERATURE), "--alpha", str(ALPHA),
                        "--batch_size", str(BATCH), "--epoch", str(EPOCHS), "--lr", str(LR), "--milestones", "100"]
            dlb = common.import_file(root, "dlb.py")
        finally:
            os.chdir(here)
        dlb.accuracy = lambda output, target, topk=(1,): [torch.zeros(()) for _ in topk]  # a logged metric only
        from models import resnet

        net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1], num_classes=CLASSES)
        shapes = shapes_of(net)
        net.load_state_dict(rule_weights(dict(shapes)), strict=True)
        args = dlb.args
        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                    weight_decay=args.weight_decay)  # dlb.py __main__'s optimizer
        records = {"outputs": [], "grads": [], "loss": []}
        forward = net.forward  # train_one_epoch calls model.forward(...) (no hooks run): record through a wrapper

        def recording_forward(x):
            output = forward(x)
            records["outputs"].append(output.detach().clone())
            return output
        net.forward = recording_forward
        step = optimizer.step

        def recording_step(*a, **k):  # the gradients train_one_epoch computed, before its SGD step
            records["grads"].append({n: p.grad.clone() for n, p in net.named_parameters()})
            return step(*a, **k)
        optimizer.step = recording_step

        class RecordingMeter(dlb.AverageMeter):  # train_one_epoch's meters; the loss one gets loss.item()
            def update(self, val, n=1):
                records["loss"].append(val)
                return super().update(val, n)
        dlb.AverageMeter = RecordingMeter

        pre_data, pre_out = None, None
        for epoch in range(EPOCHS):
            rows = orders[epoch]
            loader = [(images[r], labels[r]) for r in rows.split(BATCH)]
            arrays[f"state/rows/epoch{epoch}"] = rows
            _, _, pre_data, pre_out = dlb.train_one_epoch(net, optimizer, loader, args.alpha, pre_data, pre_out)
            arrays[f"state/pre_out/epoch{epoch}"] = pre_out.detach().clone()
    losses = records["loss"][0::2]  # loss_recorder.update runs before acc_recorder.update every step
    calls = 0
    for s in range(EPOCHS * STEPS):
        count = 1 if s == 0 else 2  # the run's first step: the current batch only
        for c in range(count):
            arrays[f"outputs/step{s}/call{c}"] = records["outputs"][calls + c]
        calls += count
        arrays[f"loss/step{s}"] = torch.tensor([losses[s]], dtype=torch.float64)
        arrays[f"state/grad_projection/step{s}"] = gradient_projections(records["grads"][s])
    case = {"network": "models/resnet.py ResNet(BasicBlock, [1, 1, 1], num_classes=10)", "classes": CLASSES,
            "batch": BATCH, "epochs": EPOCHS, "steps": STEPS, "temperature": args.T, "alpha": args.alpha,
            "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay, "nesterov": True,
            "weights": "tests/golden/rule_weights.py (by name)", "shapes": shapes,
            "gradient_names": [n for n, _ in net.named_parameters()]}
    common.write(options.out, "dlb_step", REPOSITORY, COMMIT, FILES, case, arrays)


if __name__ == "__main__":
    main()
