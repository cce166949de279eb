"""Golden fixtures of MixSKD (Yang et al., ECCV 2022) from winycg/Self-KD-Lib, run from a checkout at the pinned commit.

``selfkdlib_mixskd_train``: the reference's own ``main_mixskd_cifar.py`` executed as ``__main__`` with
``--epochs 0`` (its set-up: arguments, network, ``DistillKL(kd_T)``, ``discriminatorLoss(dim_ins)``, the SGD line;
the script then stops where it loads a best checkpoint no epoch wrote), then its ``train(0, criterion_list,
optimizer)`` over a two-batch loader: 4 CIFAR-sized images of 10 classes a step, its defaults otherwise (kd_T 3,
mixup_alpha 0.4, momentum 0.9, nesterov, weight decay 5e-4, and the first epoch's warm-up lr of ``adjust_lr``,
0.1 (1 + step) / (5 x 2): 0.01 then 0.02, stored per step). The
network is the file's ``ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1])`` (the smallest the file builds: one block a
stage; its widths are fixed at 64-512) registered on the reference's ``models`` module and named by ``--arch``. Its
weights and the discriminators' (a Python list the state_dict does not hold) are made by
``tests/golden/rule_weights.py`` from their names. The mixing draws are the reference's own ``mixup_data`` (numpy's
Beta, torch's permutation, seeded), recorded per step with its outputs.

Stored: per step the lam and permutation, the S = 4 classifiers' logits over the 2B images and the self-teacher's two
outputs (from a forward hook), every loss part (``loss_cls``, ``loss_mixcls``, ``loss_div``, ``loss_fea``,
``loss_gan``, read from the script's ``AverageMeter.update`` calls) and the total back-propagated, the gradient of
every parameter of the network as projections (``tests/golden/network_check.py``; the self-teacher's None gradients
as zeros); after step 1 the BN running statistics as projections; then the eval-mode logits of the four classifiers.

``selfkdlib_mixskd_networks``: the MixSKD file's backbone (``ResNet_Auxiliary(...).backbone``, a ``CIFAR_ResNet``)
at 100 classes for ResNet-18 (with CE gradients) and ResNet-50, held as ``resnet18_mixskd`` / ``resnet50_mixskd``
by ``tests/golden/network_check.py``.

    python tools/golden/selfkdlib_mixskd.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from unittest import mock

import common
import networks
import numpy as np
import torch

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "winycg/Self-KD-Lib"
COMMIT = "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
BATCH, CLASSES, STEPS = 4, 10, 2
FILES = ["main_mixskd_cifar.py", "models/resnet_mixskd.py", "methods/adversarial.py", "utils.py"]


class Images(list):
    """What the script asks of its dataset: ``targets`` (the class count) and ``[0][0].size()`` (C, H, W)."""

    targets = list(range(CLASSES))


class Loader(list):
    """The batches ``(inputs, targets)`` as train() iterates its loader, with its ``dataset``."""


def make_loader():
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen))
               for _ in range(STEPS)]
    loader = Loader(batches)
    loader.dataset = Images([(batches[0][0][0], 0)])
    return batches, loader


def run_train(root: Path, out: str, batches, loader) -> dict:
    fake = types.ModuleType("dataloader.dataloaders")
    fake.load_dataset = lambda args: (loader, loader)
    import models  # the reference's models package (the checkout is on sys.path)

    models.MixSKD_golden = lambda **kw: models.resnet_mixskd.ResNet_Auxiliary(models.resnet_mixskd.BasicBlock,
                                                                                [1, 1, 1, 1], **kw)
    argv = ["main_mixskd_cifar.py", "--arch", "MixSKD_golden", "--epochs", "0", "--checkpoint-dir", out]
    namespace = {"__name__": "__main__", "__file__": str(root / "main_mixskd_cifar.py")}
    source = (root / "main_mixskd_cifar.py").read_text()
    sys.modules["dataloader.dataloaders"] = fake  # (not mock.patch.dict: it would drop torch modules imported here)
    with mock.patch.object(sys, "argv", argv):
        torch.manual_seed(0)
        try:
            exec(compile(source, str(root / "main_mixskd_cifar.py"), "exec"), namespace)  # noqa: S102
        except FileNotFoundError:  # the best-checkpoint load after the (empty) epoch loop
            pass
        finally:
            del sys.modules["dataloader.dataloaders"]
    net = namespace["net"].module
    gan = namespace["criterion_list"][2]
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(rule_weights(shapes), strict=True)
    disc_shapes = {}
    for i, disc in enumerate(gan.classifier):
        names = {f"discriminator.{i}.{k}": tuple(v.shape) for k, v in disc.state_dict().items()}
        disc.load_state_dict({k.split(".", 2)[2]: v for k, v in rule_weights(names).items()})
        disc_shapes.update(names)
    records = {"draws": [], "outputs": [], "parts": [], "total": [], "grads": [], "running": [], "lr": []}
    mixup = namespace["mixup_data"]

    def recording_mixup(*a, **k):
        mixed, y_a, y_b, lam, index = mixup(*a, **k)
        records["draws"].append((float(lam), index.clone()))
        return mixed, y_a, y_b, lam, index
    namespace["mixup_data"] = recording_mixup

    class RecordingMeter(namespace["AverageMeter"]):
        def update(self, val, n=1):
            records["parts"].append((self.name, float(val)))
            super().update(val, n)
    namespace["AverageMeter"] = RecordingMeter
    net.register_forward_hook(lambda m, i, o: records["outputs"].append(o) if m.training else None)
    optimizer = namespace["optimizer"]
    step = optimizer.step

    def recording_step(*a, **k):
        records["grads"].append(common.named_grads(net))
        records["lr"].append(optimizer.param_groups[0]["lr"])
        result = step(*a, **k)
        records["running"].append({k: v.clone() for k, v in net.state_dict().items() if "running" in k})
        return result
    optimizer.step = recording_step
    backward = torch.Tensor.backward

    def recording_backward(self, *a, **k):
        records["total"].append(self.detach().clone())
        return backward(self, *a, **k)
    np.random.seed(0)
    torch.manual_seed(0)
    with mock.patch.object(torch.Tensor, "backward", recording_backward):
        namespace["train"](0, namespace["criterion_list"], optimizer)
    net.eval()
    with torch.no_grad():
        records["eval"] = net(batches[0][0])[0]
    records["shapes"], records["disc_shapes"] = shapes, disc_shapes
    records["grad_names"] = [k for k, _ in net.named_parameters()]
    return records


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    torch.set_num_threads(1)  # the test runs with one thread too: the same reduction order (the second step is
    # sensitive to float round-off, see tests/golden/test_selfkdlib_mixskd.py)
    batches, loader = make_loader()
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only(), tempfile.TemporaryDirectory() as out:
        records = run_train(root, out, batches, loader)
        from models import resnet_mixskd

        x = networks.batch(4)
        net_arrays = {"batch/x": x}
        case = {"batch": 4, "size": 32, "weights": "tests/golden/rule_weights.py (by name)", "networks": {}}
        for tag, blocks, block, grads in [("resnet18_mixskd", [2, 2, 2, 2], resnet_mixskd.BasicBlock, True),
                                          ("resnet50_mixskd", [3, 4, 6, 3], resnet_mixskd.Bottleneck, False)]:
            torch.manual_seed(0)
            backbone = resnet_mixskd.ResNet_Auxiliary(block, blocks, num_classes=100).backbone
            entry, arrays = networks.network_case(tag, backbone, x, forward=lambda net, inputs: net(inputs)[0],
                                                  gradients=grads)
            case["networks"][tag] = entry
            net_arrays.update(arrays)
    arrays = {}
    names = {"train_loss_cls": "cls", "train_loss_mixcls": "mixcls", "train_loss_div": "div",
             "train_loss_fea": "fea", "train_loss_gan": "gan"}
    parts = [(names[n], v) for n, v in records["parts"] if n in names]
    per_step = len(names)
    for s in range(STEPS):
        x, y = batches[s]
        lam, index = records["draws"][s]
        arrays[f"batch/x{s}"], arrays[f"batch/y{s}"] = x, y
        arrays[f"state/step{s}/lam"], arrays[f"state/step{s}/index"] = torch.tensor(lam), index
        arrays[f"state/step{s}/lr"] = torch.tensor(records["lr"][s], dtype=torch.float64)
        logits, _, teacher_of_mixture, teacher_of_mixed = records["outputs"][s]
        for k, z in enumerate(logits):
            arrays[f"outputs/step{s}/logits{k}"] = z.detach()
        arrays[f"outputs/step{s}/teacher_of_mixture"] = teacher_of_mixture.detach()
        arrays[f"outputs/step{s}/teacher_of_mixed"] = teacher_of_mixed.detach()
        for name, value in parts[s * per_step:(s + 1) * per_step]:
            arrays[f"loss/step{s}/{name}"] = torch.tensor(value)
        arrays[f"loss/step{s}/total"] = records["total"][s]
        grads = records["grads"][s]
        arrays[f"state/grad_projection/step{s}"] = gradient_projections({k: grads[k] for k in records["grad_names"]})
    running = records["running"][-1]
    arrays["state/running_projection/step1"] = gradient_projections(running)
    for k, z in enumerate(records["eval"]):
        arrays[f"outputs/eval/logits{k}"] = z
    common.write(options.out, "selfkdlib_mixskd_train", REPOSITORY, COMMIT, FILES,
                 {"network": "ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1])", "classes": CLASSES, "batch": BATCH,
                  "steps": STEPS, "kd_T": 3.0, "mixup_alpha": 0.4, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 5e-4, "weights": "tests/golden/rule_weights.py (by name)",
                  "state_dict": [[k, list(v)] for k, v in records["shapes"].items()],
                  "discriminators": [[k, list(v)] for k, v in records["disc_shapes"].items()],
                  "gradient_names": records["grad_names"], "running_names": list(running)}, arrays)
    common.write(options.out, "selfkdlib_mixskd_networks", REPOSITORY, COMMIT, ["models/resnet_mixskd.py"], case,
                 net_arrays)


if __name__ == "__main__":
    main()
