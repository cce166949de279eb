"""Golden fixture of FRSKD as winycg/Self-KD-Lib runs it (``methods/frskd.py`` ``FRSKD`` and ``Attention``,
``utils.py`` ``DistillKL`` at ``main.py``'s T = 4, ``nn.CrossEntropyLoss``), run from a checkout at the pinned commit
on its ``CIFAR_ResNet18_BiFPN`` (``models/bifpnc.py``: ``CIFAR_ResNet18`` and ``BiFPNc(repeat=1, depth=[2] * 3,
width=2)``, 100 classes) in training mode, with weights made by ``tests/golden/rule_weights.py`` from the reference's
names, except the BiFPN's fusion weights (``up_weight`` / ``down_weight``), which the rule would make small and
partly negative: they are 0.5 + |rule value| and stored whole; both classifiers' weights x ``FC_SCALE``.

One step on a batch of 4 images of 32 px (seeded): stored the logits of both networks, each term (the two CEs, the
KL, the attention term, recomputed with the reference's own criteria on a first forward), ``loss_cls``,
``loss_div`` and their sum from the reference's ``FRSKD`` call, and every parameter's gradient of that sum as
projections (``tests/golden/network_check.py``).

A second case, ``bifpn3``: the reference's ``BiFPNc`` alone over three random stage maps (16 / 32 / 64 channels at
8 / 4 / 2 px, batch 2: a 3-stage CIFAR ResNet's channels) with ``repeat=2, depth=[1, 1, 1], width=1``, rule-made
weights (fusion weights as above), in training mode, each of ``preact`` True and False: the refined maps and logits
(whole), and the gradients of a fixed linear read-out of them with respect to the input maps and every parameter.

    python tools/golden/selfkdlib_frskd.py --repo /work/.mirror/winycg+Self-KD-Lib/repo
"""
from __future__ import annotations

import common
import torch

from networks import shapes_of
from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "winycg/Self-KD-Lib"
COMMIT = "ede3062d1193626da2bc8a1ceba535d84fb0a08c"
BATCH, CLASSES, T = 4, 100, 4.0  # images, CIFAR-100, main.py's --T
FC_SCALE = 3.0  # rule-made classifier weights give logits of std ~0.8; x3 spreads them over a few units
BIFPN3 = {"channels": [16, 32, 64], "sizes": [8, 4, 2], "batch": 2, "classes": 10, "repeat": 2, "depth": [1, 1, 1],
          "width": 1}


def bifpn3_case(bifpnc) -> tuple[dict, dict]:
    """The generality case: BiFPNc over 3 levels, 2 layers, width 1, for preact True and False."""
    spec, gen = BIFPN3, torch.Generator().manual_seed(31)
    maps = [torch.randn(spec["batch"], c, s, s, generator=gen) for c, s in zip(spec["channels"], spec["sizes"])]
    arrays = {f"bifpn3/input/{i}": m for i, m in enumerate(maps)}
    case = dict(spec)
    for preact in (True, False):
        net = bifpnc.BiFPNc(spec["channels"], spec["classes"], repeat=spec["repeat"], depth=spec["depth"],
                            width=spec["width"])
        shapes = shapes_of(net)
        weights = rule_weights(dict(shapes))
        fusion = {k: 0.5 + v.abs() for k, v in weights.items() if "_weight." in k}
        weights.update(fusion)
        net.load_state_dict(weights, strict=True)
        net.train()
        inputs = [m.clone().requires_grad_(True) for m in maps]
        feats, out = net(inputs, preact=preact)
        readout = out.pow(2).sum() + sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats)
        readout.backward()
        tag = f"bifpn3/preact{int(preact)}"
        arrays.update({f"{tag}/logits": out.detach(), f"{tag}/readout": readout.detach().reshape(1),
                       **{f"{tag}/feat/{i}": f.detach() for i, f in enumerate(feats)},
                       **{f"{tag}/input_grad/{i}": m.grad for i, m in enumerate(inputs)},
                       f"{tag}/grad_projection": gradient_projections(common.named_grads(net))})
        arrays.update({f"weights/bifpn3/{k}": v for k, v in fusion.items()})
        case["shapes"], case["gradient_names"] = shapes, [k for k, _ in net.named_parameters()]
    return case, arrays


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen)
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only():
        bifpnc = common.import_file(root, "models/bifpnc.py", "models.bifpnc")  # imports .resnet relatively
        frskd = common.import_file(root, "methods/frskd.py", "selfkdlib_frskd")
        utils = common.import_file(root, "utils.py", "selfkdlib_utils")
        net = bifpnc.CIFAR_ResNet18_BiFPN(num_classes=CLASSES)
        shapes = shapes_of(net)
        weights = rule_weights(dict(shapes))
        fusion = {k: 0.5 + v.abs() for k, v in weights.items() if "_weight." in k}
        weights.update(fusion)
        for name in ("backbone.fc.weight", "bifpn.fc.weight"):
            weights[name] = weights[name] * FC_SCALE
        net.load_state_dict(weights, strict=True)
        net.train()
        criterion_cls, criterion_div = torch.nn.CrossEntropyLoss(), utils.DistillKL(T)
        with torch.no_grad():  # each term, from the reference's criteria (the same batch statistics as the step)
            logit, features, bi_feats, bi_logits = net(x)
            terms = {"ce": criterion_cls(logit, y), "teacher_ce": criterion_cls(bi_logits, y),
                     "kd": criterion_div(logit, bi_logits), "attention": frskd.AT(features, bi_feats)}
        net.zero_grad()
        _, loss_cls, loss_div = frskd.FRSKD(net, x, y, criterion_cls, criterion_div)  # the reference's own step
        loss = loss_cls + loss_div
        loss.backward()
        grads = common.named_grads(net)
        bifpn3, bifpn3_arrays = bifpn3_case(bifpnc)
    case = {"batch": BATCH, "num_classes": CLASSES, "T": T, "fc_scale": FC_SCALE, "size": 32,
            "network": "models/bifpnc.py:CIFAR_ResNet18_BiFPN", "shapes": shapes,
            "weights": "tests/golden/rule_weights.py (by name); fusion weights stored; fc weights x fc_scale",
            "gradient_names": list(grads), "bifpn3": bifpn3}
    arrays = {"batch/x": x, "batch/y": y, "outputs/logits": logit, "outputs/teacher_logits": bi_logits,
              **{f"weights/{k}": v for k, v in fusion.items()},
              **{f"loss/{k}": v.reshape(1) for k, v in terms.items()},
              "loss/cls": loss_cls.detach().reshape(1), "loss/div": loss_div.detach().reshape(1),
              "loss/total": loss.detach().reshape(1), "state/grad_projection/step0": gradient_projections(grads),
              **bifpn3_arrays}
    print({k: round(float(v), 5) for k, v in terms.items()}, f"logits std {float(logit.std()):.3f} "
          f"teacher {float(bi_logits.std()):.3f}")
    common.write(options.out, "selfkdlib_frskd", REPOSITORY, COMMIT,
                 ["methods/frskd.py", "utils.py", "models/bifpnc.py", "models/resnet.py"], case, arrays)


if __name__ == "__main__":
    main()
