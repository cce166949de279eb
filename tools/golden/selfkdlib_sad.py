"""Golden fixture of SAD as winycg/Self-KD-Lib runs it (Hou et al., ICCV 2019), run from a checkout at the pinned
commit.

``selfkdlib_sad``: the reference's ``models/resnet.py`` ``CIFAR_ResNet18`` (the network of the README's SAD row,
``scripts/main_cifar.sh``: ``--method SAD`` with the default ``--arch CIFAR_ResNet18``) at 100 classes, its weights
made by ``tests/golden/rule_weights.py`` from its state_dict names, then two training steps on a batch of 2 images of
32 px: each step the reference's own ``methods/sad.py`` ``SAD(net, inputs, targets, criterion_cls, criterion_div)``
(``loss_cls`` = CE, ``loss_div`` = 1000 x the attention term over ``net(x, feature=True)``'s four stage maps) with
``main.py``'s criteria, ``loss = loss_cls + loss_div``, main.py's optimizer line and its warm-up learning rate, as in
``tools/golden/selfkdlib_dks.py`` (whose ``generate`` and ``run_steps`` this reuses). Stored: names, shapes and
parameter count, each step's logits, ``loss_cls``, ``loss_div`` and the total, the learning rates, the first step's
gradients and the BN running statistics after the second step (both as projections, ``tests/golden/network_check.py``).

    python tools/golden/selfkdlib_sad.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import re

from selfkdlib_dks import generate


def sad_step(root, sad, net, criteria):
    """``SAD(net, inputs, targets, criterion_cls, criterion_div)``; the attention weight read from its line."""
    weight = re.search(r"loss_div \+= ([0-9.e]+) \* AT\(", (root / "methods/sad.py").read_text())
    assert weight, "methods/sad.py: no `loss_div += <weight> * AT(...)` line; the reference changed"

    def step(model, x, y):
        logit, loss_cls, loss_div = sad.SAD(model, x, y, *criteria)
        return [logit], loss_cls, loss_div
    return step, {"weight": float(weight.group(1)), "p": sad.AT.p}


if __name__ == "__main__":
    generate(__doc__.splitlines()[0], "methods/sad.py", "CIFAR_ResNet18", sad_step, ["logits"])
