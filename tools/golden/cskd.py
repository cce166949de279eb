"""Golden fixture of alinlab/cs-kd (Yun et al., CVPR 2020), run from a checkout at the pinned commit.

``cskd_train``: the reference's own ``train.py`` ``train(epoch)`` with ``--cls`` (T = 4, lambda = 1, its defaults) for
one epoch of two steps, each batch 4 anchors followed by their 4 same-class partners (the layout its
``PairBatchSampler`` yields), on its CIFAR DenseNet (``models/densenet3.py`` ``CIFAR_DenseNet``) at a small size (one
bottleneck layer a stage, growth 4, 10 classes, the classifier's initial weights x30 so that the logits spread over a
few units; its DenseNet-121 is 6-12-24-16 at growth 32), with its optimizer line
(SGD momentum 0.9, weight decay ``--decay`` 1e-4, lr 0.1). train.py builds its data and network at import: the
generator gives it a two-batch loader in place of ``datasets.load_dataset`` and swaps in the small network and the
optimizer built by train.py's own line. Stored: the initial weights, each step's anchor and partner logits, CE and
class-wise KD losses, the first step's gradients (recorded as the optimizer steps), and the BN running statistics
after each step (the partner pass runs in training mode under no_grad, so it moves them too).

``cskd_networks``: its CIFAR ResNet-18 (``models/resnet.py`` ``CIFAR_ResNet18``) and DenseNet-121
(``models/densenet3.py`` ``CIFAR_DenseNet121``) at 100 classes: state_dict names and shapes, parameter counts and
logits with weights made by ``tests/golden/rule_weights.py``, as ``pskd_networks``.

    python tools/golden/cskd.py --repo /work/.mirror/alinlab+cs-kd/repo
"""
from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import types
from unittest import mock

import common
import torch

from tests.golden.rule_weights import rule_weights

REPOSITORY = "alinlab/cs-kd"
COMMIT = "b447f250405932501cb28db0dc09eadeab526b80"
HALF, CLASSES, STEPS = 4, 10, 2  # anchors a batch (the reference's batch is 2 x HALF), classes, steps
GRAD_STEPS = (0,)  # step 1's logits depend on step 0's gradient and update, so they hold it too (fixture size)


class Images(list):
    """What train.py asks of its dataset: ``len`` and ``num_classes``."""

    num_classes = CLASSES


class Loader(list):
    """The batches ``(inputs, targets)`` as train() iterates its loader, with its ``dataset``."""

    dataset = Images(range(STEPS * HALF))


def make_batches():
    gen = torch.Generator().manual_seed(3)
    batches, labels = [], []
    for _ in range(STEPS):
        y = torch.randperm(CLASSES, generator=gen)[:HALF]
        x = torch.randn(2 * HALF, 3, 32, 32, generator=gen)  # anchors, then one partner of the same class each
        batches.append((x, torch.cat([y, y])))
        labels.append(y)
    return Loader(batches)


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    loader = make_batches()
    fake_datasets = types.ModuleType("datasets")
    fake_datasets.load_dataset = lambda *a, **k: (loader, loader)
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only(), tempfile.TemporaryDirectory() as out, \
            mock.patch.object(os, "popen", lambda *a, **k: io.StringIO("24 80")), \
            mock.patch.dict(sys.modules, {"datasets": fake_datasets}), \
            mock.patch.object(sys, "argv", ["train.py", "--cls", "--saveroot", out, "--epoch", "0"]):
        # (utils.py reads `stty size`; --epoch 0: train.py runs its whole training loop at import, here none)
        reference = common.import_file(root, "train.py", "cskd_train")
        from models import densenet3

        torch.manual_seed(0)
        net = densenet3.CIFAR_DenseNet(densenet3.Bottleneck, [1, 1, 1, 1], growth_rate=4, num_classes=CLASSES)
        with torch.no_grad():  # logits of a few units (PyTorch's default init gives ~0.1 here, and a class-wise
            net.linear.weight.mul_(30.0)  # term of ~1e-4 that hardly depends on T)
        reference.net = net
        line = [s.strip() for s in (root / "train.py").read_text().splitlines() if re.match(r"optimizer = optim\.SGD",
                                                                                          s.strip())]
        exec(line[0], vars(reference))  # noqa: S102  (train.py's optimizer line, read from the reference and run)
        arrays = {f"weights/{k}": v for k, v in common.named_state(net).items()}
        for s, (x, y) in enumerate(loader):
            arrays[f"batch/x{s}"], arrays[f"batch/y{s}"] = x, y
        records = {"logits": [], "ce": [], "cls": [], "grads": [], "state": []}
        step = reference.optimizer.step

        def recording_step(*a, **k):
            records["grads"].append(common.named_grads(net))
            result = step(*a, **k)
            records["state"].append({k: v for k, v in common.named_state(net).items() if "running" in k})
            return result
        reference.optimizer.step = recording_step
        net.register_forward_hook(lambda module, inputs, output: records["logits"].append(output.detach().clone()))
        criterion, kdloss = reference.criterion, reference.kdloss
        reference.criterion = lambda *a: records["ce"].append(criterion(*a)) or records["ce"][-1]
        reference.kdloss = lambda *a: records["cls"].append(kdloss(*a)) or records["cls"][-1]
        reference.train(0)
        import models

        networks, shapes = {"batch/x": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}, {}
        for name, build in {"preact_resnet18": lambda: models.CIFAR_ResNet18(num_classes=100),
                            "densenet121_cifar": lambda: models.CIFAR_DenseNet121(num_classes=100)}.items():
            model = build()
            shapes[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
            model.load_state_dict(rule_weights({k: v.shape for k, v in model.state_dict().items()}))
            networks[f"state/{name}/parameters"] = torch.tensor(sum(p.numel() for p in model.parameters()))
            with torch.no_grad():
                networks[f"outputs/{name}/train"] = model.train()(networks["batch/x"])
                networks[f"outputs/{name}/eval"] = model.eval()(networks["batch/x"])
    for s in range(STEPS):
        arrays[f"outputs/step{s}/anchor"] = records["logits"][2 * s]
        arrays[f"outputs/step{s}/partner"] = records["logits"][2 * s + 1]
        arrays[f"loss/step{s}/ce"] = records["ce"][s].detach()
        arrays[f"loss/step{s}/cls"] = records["cls"][s].detach()
        arrays.update({f"state/step{s}/{k}": v for k, v in records["state"][s].items()})
        if s in GRAD_STEPS:
            arrays.update({f"grads/step{s}/{k}": v for k, v in records["grads"][s].items()})
    common.write(options.out, "cskd_train", REPOSITORY, COMMIT, ["train.py", "models/densenet3.py"],
                 {"network": "CIFAR_DenseNet(Bottleneck, [1, 1, 1, 1], growth_rate=4)", "classes": CLASSES,
                  "anchors": HALF, "steps": STEPS, "temperature": 4.0, "lambda": 1.0, "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 1e-4}, arrays)
    common.write(options.out, "cskd_networks", REPOSITORY, COMMIT, ["models/resnet.py", "models/densenet3.py"],
                 {"classes": 100, "batch": 2, "weights": "tests/golden/rule_weights.py", "state_dict": shapes},
                 networks)


if __name__ == "__main__":
    main()
