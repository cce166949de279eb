"""Golden fixture of HobbitLong/RepDistiller's CIFAR networks (``models/resnet.py``, ``models/wrn.py``,
``models/vgg.py``): each network peerkd takes from that code, at 100 classes, its state_dict names -> shapes, its
parameter count, its logits on a batch of 4 with weights made by rule (training-mode and evaluation-mode forward)
and the gradient of every parameter of a cross-entropy loss (as fixed random projections,
``tests/golden/network_check.py``).

    python tools/golden/repdistiller.py --repo /work/.mirror/HobbitLong+RepDistiller/repo
"""
from __future__ import annotations

from networks import generate

REPOSITORY = "HobbitLong/RepDistiller"
COMMIT = "b84f547c5db6a35318d4671d7d5c4de74c822403"
# peerkd name -> (reference file, reference factory)
NETWORKS = {"resnet8": ("resnet", "resnet8"), "resnet32": ("resnet", "resnet32"), "resnet110": ("resnet", "resnet110"),
            "wrn16_1": ("wrn", "wrn_16_1"), "wrn16_2": ("wrn", "wrn_16_2"), "wrn40_2": ("wrn", "wrn_40_2"),
            "vgg16_crd": ("vgg", "vgg16_bn"), "vgg19_crd": ("vgg", "vgg19_bn")}


if __name__ == "__main__":
    generate("repdistiller_networks", REPOSITORY, COMMIT, NETWORKS, __doc__.splitlines()[0])
