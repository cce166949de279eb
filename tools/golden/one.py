"""Golden fixtures from Lan1991Xu/ONE_NeurIPS2018 (ONE, the authors' code).

    python tools/golden/one.py --repo PATH_TO_ONE_NeurIPS2018

Runs the reference's own modules (``models/cifar/resnet.py`` ``ONE_ResNet`` and ``ResNet``, ``loss/kl_loss.py``
``KLLoss``, ``utils/ramps.py`` ``sigmoid_rampup``) on the CPU in fp32 with formula weights (``tests/golden/lineage.py``)
and writes:

- ``one_lan_step.npz``: one training step of ``cifar_one.py`` ``train()`` on ``ONE_ResNet(depth=8)`` (its smallest
  depth: one basic block a stage; 3 branches, the gate, the detached teacher of ``KLLoss``), 10 classes, a batch of 8:
  the outputs, the loss and every parameter's gradient (sketched) at epochs 0, 40 and 100
  (``--consistency_rampup 80``), and the ramp-up weight of every epoch 0..100.
- ``one_lan_networks.npz``: ``ResNet(depth=110)`` and ``ONE_ResNet(depth=110)`` at 100 classes (n = (110 - 2) // 6 =
  18 bottlenecks a stage): state_dict names -> shapes, parameter counts, the eval-mode logits of a batch of 2.

The loss is composed as ``cifar_one.py`` ``train()`` writes it: the CE of the three branches and of the gated
ensemble, plus ``consistency_weight`` times the three ``KLLoss(branch, ensemble)``.
"""
from __future__ import annotations

import common
import torch
from torch import nn

from tests.golden import lineage

REPOSITORY = "Lan1991Xu/ONE_NeurIPS2018"
COMMIT = "54afde30fe039c8bd66668f0d17944b451b8b189"
EPOCHS = (0, 40, 100)  # the ramp-up's start, its middle and past its end (--consistency_rampup 80)
CLASSES, BATCH = 10, 8  # 10 classes keep the KL's 1e-7 epsilon (classes x 1e-7) below the tolerance


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.use_deterministic_algorithms(True)
    with common.checkout(args.repo, COMMIT) as root, common.cpu_only():
        resnet = common.import_file(root, "models/cifar/resnet.py", "lan_resnet")
        kl_loss = common.import_file(root, "loss/kl_loss.py", "lan_kl_loss")
        ramps = common.import_file(root, "utils/ramps.py", "lan_ramps")

        torch.manual_seed(1)
        x = torch.round(torch.randn(BATCH, 3, 32, 32) * 16) / 16  # multiples of 1/16: the fixture compresses
        y = torch.randint(0, CLASSES, (BATCH,))
        model = resnet.one_resnet(num_classes=CLASSES, depth=8)
        shapes, state, arrays = lineage.start_step(model, x, y, lambda e: ramps.sigmoid_rampup(e, 80))
        criterion, criterion_kl = nn.CrossEntropyLoss(), kl_loss.KLLoss()
        for epoch in EPOCHS:
            model.load_state_dict(state)
            model.train()
            model.zero_grad()
            consistency_weight = ramps.sigmoid_rampup(epoch, 80)  # cifar_one.get_current_consistency_weight
            outputs1, outputs2, outputs3, outputs4 = model(x)
            loss_cross = criterion(outputs1, y) + criterion(outputs2, y) + criterion(outputs3, y) + criterion(
                outputs4, y)
            loss_kl = consistency_weight * (criterion_kl(outputs1, outputs4) + criterion_kl(outputs2, outputs4)
                                            + criterion_kl(outputs3, outputs4))
            loss = loss_cross + loss_kl
            loss.backward()
            tag = f"epoch{epoch}"
            arrays[f"loss/{tag}"] = loss.detach()
            arrays[f"state/weight_{tag}"] = torch.tensor(consistency_weight)
            if epoch == EPOCHS[0]:
                arrays["outputs/branches"] = torch.stack([outputs1, outputs2, outputs3], -1).detach()
                arrays["outputs/ensemble"] = outputs4.detach()
            grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}
            arrays.update({f"grads/{tag}/{k}": v for k, v in lineage.sketches(grads).items()})
        common.write(args.out, "one_lan_step", REPOSITORY, COMMIT,
                     ["models/cifar/resnet.py", "loss/kl_loss.py", "utils/ramps.py", "cifar_one.py"],
                     {"network": "one_resnet(depth=8)", "classes": CLASSES, "batch": BATCH, "branches": 3,
                      "temperature": 3.0, "consistency_rampup": 80, "epochs": list(EPOCHS), "shapes": shapes,
                      "weights": "formula (tests/golden/lineage.py)", "grads": "sketched (tests/golden/lineage.py)"},
                     arrays)

        torch.manual_seed(0)
        x = torch.randn(2, 3, 32, 32)
        meta, arrays = {}, {"batch/x": x}
        for name in ("resnet", "one_resnet"):
            model = getattr(resnet, name)(num_classes=100, depth=110)
            meta[name] = {"shapes": lineage.set_formula(model), "params": sum(p.numel() for p in model.parameters())}
            with torch.no_grad():
                out = model.eval()(x)
            arrays[f"outputs/{name}"] = torch.stack(out[:3], -1) if name == "one_resnet" else out
            if name == "one_resnet":
                arrays["outputs/one_resnet_ensemble"] = out[3]
        common.write(args.out, "one_lan_networks", REPOSITORY, COMMIT, ["models/cifar/resnet.py"],
                     {"depth": 110, "classes": 100, "batch": 2, "mode": "eval",
                      "weights": "formula (tests/golden/lineage.py)", "networks": meta}, arrays)


if __name__ == "__main__":
    main()
