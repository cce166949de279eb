"""Golden fixture of BAKE as winycg/Self-KD-Lib runs it (``methods/bake.py`` ``BAKE`` and ``knowledge_ensemble``,
``utils.py`` ``DistillKL``, with ``main.py``'s defaults T = 4, omega = 0.5 and its ``nn.CrossEntropyLoss``), run from
a checkout at the pinned commit on its ``CIFAR_ResNet18`` (``models/resnet.py``, 100 classes) with weights made by
``tests/golden/rule_weights.py`` from the reference's names (the classifier's weights then x ``FC_SCALE``, so the
logits spread over a few units and the targets depend on them), in training mode.

The batch is what ``IdentityBatchSampler`` yields at ``batch_size`` 2 and ``--intra-imgs`` 3: two anchors, then
the three same-class partners of the first anchor, then those of the second (8 images of 32 px, seeded). Stored: the
inputs and labels, the logits and pooled features, the propagated targets, ``loss_cls``, ``loss_div`` and their sum,
and every parameter's gradient of the sum as projections (``tests/golden/network_check.py``).

    python tools/golden/selfkdlib_bake.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import argparse

import common
import torch

from networks import shapes_of
from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "winycg/Self-KD-Lib"
COMMIT = "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
ANCHORS, INTRA, CLASSES = 2, 3, 100  # batch_size, --intra-imgs (M), CIFAR-100
T, OMEGA = 4.0, 0.5  # main.py's defaults --T, --omega
FC_SCALE = 3.0  # rule-made classifier weights give logits of std ~0.8; x3 spreads them over a few units


def make_batch():
    gen = torch.Generator().manual_seed(11)
    anchor_labels = torch.randperm(CLASSES, generator=gen)[:ANCHORS]
    labels = torch.cat([anchor_labels, anchor_labels.repeat_interleave(INTRA)])  # anchors, then each one's partners
    return torch.randn(len(labels), 3, 32, 32, generator=gen), labels


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    x, y = make_batch()
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only():
        resnet = common.import_file(root, "models/resnet.py", "selfkdlib_resnet")
        bake = common.import_file(root, "methods/bake.py", "selfkdlib_bake")
        utils = common.import_file(root, "utils.py", "selfkdlib_utils")
        net = resnet.CIFAR_ResNet18(num_classes=CLASSES)
        shapes = shapes_of(net)
        net.load_state_dict(rule_weights(dict(shapes)), strict=True)
        with torch.no_grad():
            net.fc.weight.mul_(FC_SCALE)
        net.train()
        args = argparse.Namespace(T=T, omega=OMEGA)
        logits, features = net(x, embedding=True)
        targets = bake.knowledge_ensemble(features.detach(), logits.detach(), args)
        net.zero_grad()
        # the reference's own step: BAKE(net, inputs, targets, criterion_cls, criterion_div, args) as main.py calls it
        _, loss_cls, loss_div = bake.BAKE(net, x, y, torch.nn.CrossEntropyLoss(), utils.DistillKL(T), args)
        loss = loss_cls + loss_div
        loss.backward()
        grads = common.named_grads(net)
    case = {"anchors": ANCHORS, "intra_imgs": INTRA, "num_classes": CLASSES, "T": T, "omega": OMEGA,
            "fc_scale": FC_SCALE, "size": 32, "network": "models/resnet.py:CIFAR_ResNet18",
            "weights": "tests/golden/rule_weights.py (by name), fc.weight x fc_scale", "shapes": shapes,
            "gradient_names": list(grads), "order": "anchors, then each anchor's intra_imgs partners"}
    arrays = {"batch/x": x, "batch/y": y, "outputs/logits": logits.detach(), "outputs/features": features.detach(),
              "state/targets": targets, "loss/cls": loss_cls.detach().reshape(1),
              "loss/div": loss_div.detach().reshape(1), "loss/total": loss.detach().reshape(1),
              "state/grad_projection/step0": gradient_projections(grads)}
    print(f"loss_cls {float(loss_cls.detach()):.5f} loss_div {float(loss_div.detach()):.6f} "
          f"logits std {float(logits.detach().std()):.3f}")
    common.write(options.out, "selfkdlib_bake", REPOSITORY, COMMIT,
                 ["methods/bake.py", "utils.py", "models/resnet.py"], case, arrays)


if __name__ == "__main__":
    main()
