"""Golden fixture of BYOT's own release, ArchipLab-LinfengZhang/pytorch-self-distillation-final (Zhang et al.,
"Be Your Own Teacher", ICCV 2019): its ``train.py`` run for one step on its ``resnet.py`` ResNet-18.

    python tools/golden/byot_release.py --repo PATH   # a clone holding COMMIT; writes byot_release_resnet18.npz

The script runs as written (``runpy``, ``__main__``, its own defaults: ``--loss_coefficient 0.3``,
``--feature_loss_coefficient 0.03``, ``--temperature 3``) with: CIFAR-100 replaced by one fixed batch of 8 images,
the network narrowed to 1/32 of its width and 10 classes (``byot_narrow.py``: 2..16 channels instead of 64..512),
its BN scales and statistics perturbed, ``.cuda()`` a no-op, ``numpy.int`` (removed in numpy 1.24) restored, and
``torch.optim.SGD.step`` stopping the run after recording every gradient (the adaptation layers the script adds in
its first iteration included). Stored beside the one step:
the full-width ResNet-18's parameter names and shapes, and the parameter counts of the full-width ResNet-18 / 50 and
ResNeXt-50 (32x4d) the release builds (``net`` as constructed, before the script adds its adaptation layers).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import byot_narrow as narrowed
import common

REPOSITORY = "ArchipLab-LinfengZhang/pytorch-self-distillation-final"
COMMIT = "47ca93b6a60baaaf127a762e9f19bc70f4f0ffed"  # 2020-11-02, the repository's last commit
FILES = ["resnet.py", "train.py", "autoaugment.py", "cutout.py"]
NUM_CLASSES = 100  # train.py builds resnet18() with its default num_classes=100 (the full-width counts)


def full_width(root: Path) -> dict[str, torch.Tensor]:
    resnet = common.import_file(root, "resnet.py", "resnet_full_width")
    with torch.device("meta"):
        nets = {name: getattr(resnet, name)(num_classes=NUM_CLASSES)
                for name in ("resnet18", "resnet50", "resnext50_32x4d")}
    out = narrowed.full_width_shapes(nets.pop("resnet18"), "state/full/resnet18")
    for name, net in nets.items():
        out[f"state/full/{name}/parameters"] = torch.tensor(sum(p.numel() for p in net.parameters()))
    del sys.modules["resnet_full_width"]
    return out


def one_step(root: Path) -> tuple[narrowed.Recorder, torch.Tensor, torch.Tensor]:
    import numpy
    import torchvision

    resnet = common.import_file(root, "resnet.py", "resnet")  # what train.py's ``from resnet import *`` finds
    resnet.nn = narrowed.narrowed_nn()
    recorder = narrowed.Recorder()
    resnet.resnet18 = recorder.wrap_factory(resnet.resnet18, torch.Generator().manual_seed(narrowed.SEED + 2))
    x, y = narrowed.batch(narrowed.NUM_CLASSES)
    saved = torchvision.datasets.CIFAR100, torch.utils.data.DataLoader
    numpy.int = int  # removed in numpy 1.24; autoaugment.py's policy table (a training transform) still uses it
    torchvision.datasets.CIFAR100 = lambda *args, **kwargs: None
    torch.utils.data.DataLoader = lambda *args, **kwargs: [(x, y)]
    try:
        narrowed.run_script(root / "train.py", ["--model", "resnet18", "--epoch", "1", "--batchsize",
                                                str(narrowed.BATCH)], recorder, common.cpu_only)
    finally:
        torchvision.datasets.CIFAR100, torch.utils.data.DataLoader = saved
        del numpy.int
    return recorder, x, y


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    with common.checkout(args.repo, COMMIT) as root:
        arrays = full_width(root)
        recorder, x, y = one_step(root)
    logits, features = recorder.outputs  # [out4, out3, out2, out1], [feature4, ..., feature1]: deepest first
    depth = len(logits)
    for k, (z, f) in enumerate(zip(logits, features)):
        arrays[f"outputs/logits{depth - k}"] = z  # classifier numbered by depth, 1 the shallowest
        arrays[f"outputs/feature{depth - k}"] = f
    arrays.update(narrowed.step_arrays(recorder, x, y))
    case = {"model": "resnet18", "width_divisor": narrowed.FACTOR, "batch": narrowed.BATCH, "image_size": 32,
            "num_classes": narrowed.NUM_CLASSES, "loss_coefficient": 0.3, "feature_loss_coefficient": 0.03,
            "temperature": 3.0, "seed": narrowed.SEED, "bn": "scales, shifts and running statistics perturbed"}
    common.write(args.out, "byot_release_resnet18", REPOSITORY, COMMIT, FILES, case, arrays)


if __name__ == "__main__":
    main()
