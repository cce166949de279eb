"""Golden fixture of the BYOT CIFAR code luanyunteng/pytorch-be-your-own-teacher (the code whose ``--alpha 0.1``,
``--beta 1e-6``, ``--temperature 3`` Chottananurak et al., paper 004, adopt): its ``train.py`` run for one step on its
``models/resnet.py`` ``multi_resnet18_kd``.

    python tools/golden/byot_luanyunteng.py --repo PATH   # a clone holding COMMIT; writes byot_luanyunteng_resnet18.npz

The script runs as written (``runpy``, ``__main__``, ``train multi_resnet18_kd --device cpu``, its own loss defaults)
with: the CIFAR-100 loaders replaced by one fixed batch of 8 images, the network narrowed to 1/32 of its width and
10 classes (``byot_narrow.py``: 2..16 channels instead of 64..512), its BN scales and statistics perturbed,
``tensorboardX`` and ``torchvision.models.utils`` (gone from torchvision) stubbed, its logs and checkpoints in a
temporary folder, and ``torch.optim.SGD.step`` stopping the run after recording every gradient. Stored beside the
one step: the same step with ``--beta 1`` (at its default 1e-6 the hint's share of the loss and gradients is under
float32 round-off, so a wrong hint would pass unseen), the full-width ``multi_resnet18_kd``'s parameter names and
shapes (100 classes) and the parameter counts of the full-width ``multi_resnet18_kd`` / ``multi_resnet50_kd``.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import byot_narrow as narrowed
import common

REPOSITORY = "luanyunteng/pytorch-be-your-own-teacher"
COMMIT = "8045079f9933b3dd694dee5294faac0bd8d54fab"  # 2022-01-29, the repository's last commit
FILES = ["models/resnet.py", "train.py", "dataset/data.py"]
FULL_CLASSES = 100  # train.py builds models.__dict__[arch](num_classes=100) for CIFAR-100


def full_width(root: Path) -> dict[str, torch.Tensor]:
    resnet = common.import_file(root, "models/resnet.py", "luanyunteng_resnet_full_width")
    with torch.device("meta"):
        nets = {name: getattr(resnet, name)(num_classes=FULL_CLASSES)
                for name in ("multi_resnet18_kd", "multi_resnet50_kd")}
    out = narrowed.full_width_shapes(nets.pop("multi_resnet18_kd"), "state/full/multi_resnet18_kd")
    out["state/full/multi_resnet50_kd/parameters"] = torch.tensor(
        sum(p.numel() for p in nets["multi_resnet50_kd"].parameters()))
    del sys.modules["luanyunteng_resnet_full_width"]
    return out


def one_step(root: Path, options: list[str]) -> tuple[narrowed.Recorder, torch.Tensor, torch.Tensor]:
    narrowed.fake_module("tensorboardX", SummaryWriter=lambda *args, **kwargs: type(
        "NoWriter", (), {"add_scalar": lambda self, *a, **k: None})())
    narrowed.fake_module("torchvision.models.utils")  # imported by train.py, never used
    resnet = importlib.import_module("models.resnet")  # what train.py's ``import models.resnet`` finds
    data = importlib.import_module("dataset.data")  # what its ``from dataset.data import *`` finds
    resnet.nn = narrowed.narrowed_nn()
    recorder = narrowed.Recorder()
    resnet.multi_resnet18_kd = recorder.wrap_factory(resnet.multi_resnet18_kd,
                                                     torch.Generator().manual_seed(narrowed.SEED + 2))
    x, y = narrowed.batch(narrowed.NUM_CLASSES)
    data.prepare_cifar100_train_dataset = lambda *args, **kwargs: [(x, y)]
    data.prepare_cifar100_test_dataset = lambda *args, **kwargs: [(x, y)]
    saved_cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="byot-luanyunteng-") as work:
        os.chdir(work)  # its logs and checkpoints
        try:
            narrowed.run_script(root / "train.py", ["train", "multi_resnet18_kd", "--device", "cpu", "--epoch", "1",
                                                    "--batch-size", str(narrowed.BATCH), "--workers", "0", *options],
                                recorder, common.cpu_only)
        finally:
            os.chdir(saved_cwd)
    for name in ("tensorboardX", "torchvision.models.utils", "models.resnet", "dataset.data"):
        del sys.modules[name]
    return recorder, x, y


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    with common.checkout(args.repo, COMMIT, ["models", "dataset", "train.py"]) as root:  # not its checkpoints
        arrays = full_width(root)
        recorder, x, y = one_step(root, [])
        hinted, _, _ = one_step(root, ["--beta", "1"])  # beta 1e-6 leaves the hint under float32 round-off
    assert all(torch.equal(hinted.weights[k], v) for k, v in recorder.weights.items())
    out, m1, m2, m3, final_fea, f1, f2, f3 = recorder.outputs
    for k, (z, f) in enumerate(((m1, f1), (m2, f2), (m3, f3), (out, final_fea)), start=1):
        arrays[f"outputs/logits{k}"] = z  # classifier numbered by depth, 1 the shallowest, 4 the network's fc
        arrays[f"outputs/feature{k}"] = f.flatten(1)  # the script's middle*_fea / final_fea, (B, C, 1, 1)
    arrays.update(narrowed.step_arrays(recorder, x, y))
    arrays.update({f"grads/beta1/{k}": v for k, v in hinted.grads.items()})
    arrays["loss/beta1"] = hinted.loss.reshape(())
    case = {"model": "multi_resnet18_kd", "width_divisor": narrowed.FACTOR, "batch": narrowed.BATCH,
            "image_size": 32, "num_classes": narrowed.NUM_CLASSES, "alpha": 0.1, "beta": 1e-6, "temperature": 3,
            "seed": narrowed.SEED, "bn": "scales, shifts and running statistics perturbed"}
    common.write(args.out, "byot_luanyunteng_resnet18", REPOSITORY, COMMIT, FILES, case, arrays)


if __name__ == "__main__":
    main()
