"""Golden fixture of winycg/Self-KD-Lib's plain CIFAR network (``models/resnet.py``): ``CIFAR_ResNet18`` (the
backbone of every ResNet-18 row of the library's README, BAKE's and FRSKD's included) under the peerkd name
``preact_resnet18``, at 100 classes, with its state_dict names -> shapes, parameter count, logits on a batch of 4 with
weights made by rule (training-mode and evaluation-mode forward) and the gradient of every parameter of a
cross-entropy loss.

    python tools/golden/selfkdlib_networks.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

from networks import generate

REPOSITORY = "winycg/Self-KD-Lib"
COMMIT = "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
NETWORKS = {"preact_resnet18": ("resnet", "CIFAR_ResNet18")}  # peerkd name -> (reference file, factory)


if __name__ == "__main__":
    generate("selfkdlib_networks", REPOSITORY, COMMIT, NETWORKS, __doc__.splitlines()[0])
