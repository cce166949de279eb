"""Golden fixture of DDGSD as winycg/Self-KD-Lib runs it (Xu & Liu, AAAI 2019), run from a checkout at the pinned
commit.

``selfkdlib_ddgsd``: the reference's ``models/resnet.py`` ``CIFAR_ResNet18`` (the network of the README's DDGSD row,
``scripts/main_cifar.sh``: ``--method DDGSD`` at main.py's default ``--arch``) at 100 classes, its weights made by
``tests/golden/rule_weights.py`` from its state_dict names (11 M parameters: too large to store), then two training
steps on a batch of 2 images of 32 px. The two views of each image are the reference's own
``dataloader/dataloaders.py`` ``TwoCropsTransform`` over the CIFAR-100 base augmentation of its ``load_dataset``
(``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``; here on the already normalised tensor image, seeded).
Each step runs the reference's ``methods/ddsgd.py`` ``DDGSD(net, [view1, view2], targets, criterion_cls,
criterion_div)`` with main.py's criteria (``nn.CrossEntropyLoss()``, ``utils.DistillKL(T)``, T read from main.py's
``--T`` default), ``loss = loss_cls + loss_div`` and main.py's SGD stepped after ``backward`` at its warm-up learning
rate (``tools/golden/selfkdlib_dks.py`` ``run_steps``). Stored: the state_dict names and shapes, the parameter count,
each step's views, the network's logits and embeddings of the 2B concatenated images (recorded by a forward hook),
``loss_cls``, ``loss_div``, its MMD part alone (the same call on a copy of the network with a zero ``criterion_div``)
and the total, the learning rates, the first step's gradients as projections and the BN running statistics after
the second step (projections too).

    python tools/golden/selfkdlib_ddgsd.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import copy
import importlib

import common
import torch
from selfkdlib_dks import COMMIT, REPOSITORY, main_default, run_steps

CLASSES = 100
BASE_AUGMENTATION = "RandomCrop(32, padding=4), RandomHorizontalFlip()"  # dataloaders.py load_dataset, CIFAR-100


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    files = ["models", "methods/ddsgd.py", "dataloader", "utils.py", "main.py"]
    with common.checkout(options.repo, COMMIT, files) as root, common.cpu_only():
        import torchvision.transforms as transforms

        resnet = common.import_file(root, "models/resnet.py", "selfkdlib_resnet")
        method = common.import_file(root, "methods/ddsgd.py", "selfkdlib_ddsgd")
        utils = common.import_file(root, "utils.py", "selfkdlib_utils")
        loaders = importlib.import_module("dataloader.dataloaders")  # a package (relative imports): root is on sys.path
        two_crops = loaders.TwoCropsTransform(transforms.Compose([transforms.RandomCrop(32, padding=4),
                                                                  transforms.RandomHorizontalFlip()]))
        temperature = main_default(root, "--T")
        criterion_cls, criterion_div = torch.nn.CrossEntropyLoss(), utils.DistillKL(temperature)
        torch.manual_seed(0)
        net = resnet.CIFAR_ResNet18(num_classes=CLASSES)
        recorded, extra = [], {}
        net.register_forward_hook(lambda module, inputs, output: recorded.append(output))

        def step(model, x, y):
            pairs = [two_crops(image) for image in x]  # per image, as the dataset's transform runs
            views = [torch.stack([p[v] for p in pairs]) for v in range(2)]
            s = sum(k.startswith("batch/view0_") for k in extra)
            extra.update({f"batch/view0_{s}": views[0], f"batch/view1_{s}": views[1]})
            with torch.no_grad():  # the MMD part of loss_div alone: the KL criterion zeroed, on a copy of the net
                _, _, mmd = method.DDGSD(copy.deepcopy(model), views, y, criterion_cls, lambda *a: torch.tensor(0.))
            extra[f"loss/step{s}/mmd"] = mmd
            recorded.clear()
            _, loss_cls, loss_div = method.DDGSD(model, views, y, criterion_cls, criterion_div)
            logits, embedding = recorded[-1]
            return [logits, embedding], loss_cls, loss_div

        case, arrays = run_steps(root, utils, net, step, ["logits", "embedding"])
        arrays.update(extra)
        case.update({"network": "models/resnet.py CIFAR_ResNet18", "T": temperature,
                     "views": f"dataloader/dataloaders.py TwoCropsTransform({BASE_AUGMENTATION})"})
        common.write(options.out, "selfkdlib_ddgsd", REPOSITORY, COMMIT,
                     ["models/resnet.py", "methods/ddsgd.py", "dataloader/dataloaders.py", "utils.py", "main.py"],
                     case, arrays)


if __name__ == "__main__":
    main()
