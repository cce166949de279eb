"""Golden fixture of Meta-knowledge-Lab/DLB's CIFAR networks (``models/resnet.py``, ``models/vgg.py``, the OKDDip
files CutnMix's authors ship): ``resnet32``, ``resnet110``, ``wide_resnet20_8``, ``vgg16``, ``vgg19`` at 100 classes,
with their state_dict names -> shapes, parameter counts, logits on a batch of 4 with weights made by rule
(training-mode and evaluation-mode forward) and the gradient of every parameter of a cross-entropy loss.

    python tools/golden/dlb.py --repo /work/.mirror/Meta-knowledge-Lab+DLB/repo
"""
from __future__ import annotations

from networks import generate

REPOSITORY = "Meta-knowledge-Lab/DLB"
COMMIT = "8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0"
# peerkd name -> (reference file, reference factory): the names DLB's models/__init__.py registers
NETWORKS = {"resnet32": ("resnet", "resnet32"), "resnet110_one": ("resnet", "resnet110"),
            "wide_resnet20_8": ("resnet", "wide_resnet20_8"), "vgg16_okddip": ("vgg", "vgg16"),
            "vgg19_okddip": ("vgg", "vgg19")}


if __name__ == "__main__":
    generate("dlb_networks", REPOSITORY, COMMIT, NETWORKS, __doc__.splitlines()[0])
