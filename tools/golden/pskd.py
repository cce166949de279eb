"""Golden fixtures of lgcnsai/PS-KD-Pytorch (Kim et al., ICCV 2021), run from a checkout at the pinned commit.

``pskd_train``: the reference's own ``main.train`` for three epochs (``end_epoch`` 3, alpha_T 0.8) on 8 images in
two batches of 4 (a new order every epoch), with its ``Custom_CrossEntropy_PSKD``, its optimizer line and its
``adjust_learning_rate``, on its ``PyramidNet`` at the smallest depth (8: one basic block a stage, alpha 4,
10 classes; alpha 4 still pads channels in every stage). alpha_t is what main.py's own alpha_t lines compute (read
from its source and executed). Stored: the initial weights, every step's outputs and loss, the last step's gradients
(recorded as the optimizer steps), alpha_t per epoch, the prediction memory ``all_predictions`` after every epoch and
the BN statistics after the run.

``pskd_networks``: the CIFAR-100 networks of PS-KD's tables that peerkd builds (PreAct ResNet-18, its "PreAct
ResNet-101", DenseNet-121, ResNeXt-29 8x64d, PyramidNet-110 alpha 48): each one's state_dict names and shapes (in
``meta.case``), its parameter count, and its outputs in train and eval mode on a batch of 2 with weights made by
``tests/golden/rule_weights.py`` (too large to store; the test rebuilds them from the names and shapes).

    python tools/golden/pskd.py --repo /work/.mirror/lgcnsai+PS-KD-Pytorch/repo
"""
from __future__ import annotations

import io
import os
import re
import types
from unittest import mock

import common
import torch

from tests.golden.rule_weights import rule_weights

REPOSITORY = "lgcnsai/PS-KD-Pytorch"
COMMIT = "9aa0828d099f2faed16bbac258e4153902a55021"
EPOCHS, TRAIN, BATCH, CLASSES = 3, 8, 4, 10  # two batches an epoch; 8 images of 32 px keep the fixture small
GRAD_STEPS = (5,)  # the gradients stored: the last step's (epoch 2's second, alpha_t = 0.8); the steps before are
# held through the outputs, losses and memories after them, which depend on every earlier step's gradient (fixture
# size: one gradient set is 77 KiB)


def source_lines(path, pattern: str) -> str:
    """The lines of the reference's ``path`` that match ``pattern`` (stripped), to execute as the reference wrote
    them."""
    lines = [line.strip() for line in path.read_text().splitlines() if re.match(pattern, line.strip())]
    assert lines, f"{path.name}: no line matches {pattern!r}; the reference changed"
    return "\n".join(lines)


class Loader(list):
    """The batches ``(inputs, targets, input_indices)`` as main.train iterates a loader, with ``dataset.classes``."""

    dataset = types.SimpleNamespace(classes=list(range(CLASSES)))


def train_case(root, main, models) -> dict:
    args = types.SimpleNamespace(PSKD=True, gpu=None, distributed=False, rank=0, alpha_T=0.8, end_epoch=EPOCHS,
                                 lr=0.1, lr_decay_schedule=[150, 225], lr_decay_rate=0.1, weight_decay=5e-4)
    torch.manual_seed(0)
    net = models.PyramidNet(dataset="cifar10", depth=8, alpha=4, num_classes=CLASSES, bottleneck=False)
    arrays = {f"weights/{k}": v for k, v in common.named_state(net).items()}
    scope = {"torch": torch, "net": net, "args": args}
    exec(source_lines(root / "main.py", r"optimizer = torch\.optim\.SGD\("), scope)  # noqa: S102  (main_worker's
    # optimizer line, read from the reference and run)
    optimizer = scope["optimizer"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(TRAIN, 3, 32, 32, generator=gen)
    y = torch.arange(TRAIN) % CLASSES
    arrays.update({"batch/x": x, "batch/y": y})
    records = {"outputs": [], "loss": [], "grads": []}
    step = optimizer.step

    def recording_step(*a, **k):  # the gradients the reference's train() computed, before its SGD step
        records["grads"].append(common.named_grads(net))
        return step(*a, **k)
    optimizer.step = recording_step
    net.register_forward_hook(lambda module, inputs, output: records["outputs"].append(output.detach().clone()))
    criterion = main.Custom_CrossEntropy_PSKD()

    class RecordingLoss(torch.nn.Module):
        def forward(self, outputs, targets):
            loss = criterion(outputs, targets)
            records["loss"].append(loss.detach().clone())
            return loss

    all_predictions = torch.zeros(TRAIN, CLASSES, dtype=torch.float32)  # main_worker's memory
    alpha_code = source_lines(root / "main.py", r"alpha_t = (args\.alpha_T \*|max\(0, alpha_t\))")
    for epoch in range(EPOCHS):
        order = torch.randperm(TRAIN, generator=gen)
        arrays[f"state/order/epoch{epoch}"] = order
        batches = [(x[i], y[i], i) for i in order.split(BATCH)]
        loader = Loader(batches)
        main.adjust_learning_rate(optimizer, epoch, args)
        scope = {"args": args, "epoch": epoch}
        exec(alpha_code, scope)  # noqa: S102  (main_worker's alpha_t lines, read from the reference and run)
        arrays[f"state/alpha/epoch{epoch}"] = torch.tensor(scope["alpha_t"])
        all_predictions = main.train(all_predictions, torch.nn.CrossEntropyLoss(), RecordingLoss(), optimizer, net,
                                     epoch, scope["alpha_t"], loader, args)
        arrays[f"state/memory/epoch{epoch}"] = all_predictions.clone()
    for s, (out, loss, grads) in enumerate(zip(records["outputs"], records["loss"], records["grads"])):
        arrays[f"outputs/step{s}"] = out
        arrays[f"loss/step{s}"] = loss
        if s in GRAD_STEPS:
            arrays.update({f"grads/step{s}/{k}": v for k, v in grads.items()})
    arrays.update({f"state/final/{k}": v for k, v in common.named_state(net).items() if "running" in k})
    return arrays


def network_case(models) -> tuple[dict, dict]:
    builders = {  # as models/network.py builds them for CIFAR-100 (PyramidNet-110 a48: the basic-block small one)
        "preact_resnet18": lambda: models.CIFAR_ResNet18_preActBasic(num_classes=100),
        "resnet101_pskd": lambda: models.CIFAR_ResNet101_Bottle(num_classes=100),
        "densenet121_cifar": lambda: models.CIFAR_DenseNet121(num_classes=100, bias=True),
        "resnext29_8x64d": lambda: models.CifarResNeXt(cardinality=8, depth=29, nlabels=100, base_width=64,
                                                       widen_factor=4),
        "pyramidnet110_a48": lambda: models.PyramidNet(dataset="cifar100", depth=110, alpha=48, num_classes=100,
                                                       bottleneck=False),
    }
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    arrays, shapes = {"batch/x": x}, {}
    for name, build in builders.items():
        net = build()
        shapes[name] = [[k, list(v.shape)] for k, v in net.state_dict().items()]
        net.load_state_dict(rule_weights({k: v.shape for k, v in net.state_dict().items()}))
        arrays[f"state/{name}/parameters"] = torch.tensor(sum(p.numel() for p in net.parameters()))
        with torch.no_grad():
            arrays[f"outputs/{name}/train"] = net.train()(x)  # batch statistics (and the running ones updated)
            arrays[f"outputs/{name}/eval"] = net.eval()(x)  # the updated running statistics
        print(name, arrays[f"state/{name}/parameters"].item(), arrays[f"outputs/{name}/eval"].abs().max().item())
    return arrays, shapes


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only(), \
            mock.patch.object(os, "popen", lambda *a, **k: io.StringIO("24 80")), \
            mock.patch.object(torch.cuda, "FloatTensor", torch.FloatTensor):  # pyramid.py's zero padding
        # (utils/etc.py reads `stty size` at import)
        reference_main = common.import_file(root, "main.py", "pskd_main")
        import models
        common.write(options.out, "pskd_train", REPOSITORY, COMMIT,
                     ["main.py", "loss/pskd_loss.py", "models/pyramid.py"],
                     {"network": "PyramidNet(cifar10, depth 8, alpha 4)", "classes": CLASSES, "train": TRAIN,
                      "batch": BATCH, "epochs": EPOCHS, "alpha_T": 0.8, "optimizer": "main_worker's SGD"},
                     train_case(root, reference_main, models))
        arrays, shapes = network_case(models)
        common.write(options.out, "pskd_networks", REPOSITORY, COMMIT,
                     ["models/preact_resnet.py", "models/densenet_cifar.py", "models/resnext.py", "models/pyramid.py"],
                     {"classes": 100, "batch": 2, "weights": "tests/golden/rule_weights.py", "state_dict": shapes},
                     arrays)


if __name__ == "__main__":
    main()
