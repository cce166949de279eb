"""Golden fixture of the public PCL reproduction, shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation
(Wu & Gong, "Peer Collaborative Learning for Online Knowledge Distillation", AAAI 2021; the authors published no code):
three training steps at epoch 100 of its ``Controller.train_step`` (``src/controller.py``: three peers on three
views, the peer ensemble teacher ``en_fc``, the temporal-mean peer teachers, ``src/losses/loss_wrapper.py``'s loss)
each followed by its ``update_ema_variables(model, mean_model, 0.999, global_step)`` (``src/trainer.py``,
``src/utils/ema.py``), from global step 0; one more EMA update at global step 39100 (epoch 100 of 391 steps, where
alpha is capped at 0.999); and its ramp-up weight for epochs 0-299.

The network is the reproduction's own ``ResNet`` class (``src/models/resnet.py``) with one basic block a stage
(its factories use 5 or 12; one is the smallest it builds), 10 classes, weights made by ``tests/golden/rule_weights.py``
(the peers', and the mean network's under the prefix ``mean.``: it starts independent, as the reproduction builds it),
SGD as its ``src/optimizer/optimizer_config.yml`` (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4), a batch of 2
images x 3 views. Gradients and final states are stored as projections (``tests/golden/network_check.py``).

    python tools/golden/pcl.py --repo PATH  # a clone of shaoeric/Peer-Collaborative-Learning-for-Online-KD...
"""
from __future__ import annotations

import sys
import types

import common
import torch
from networks import shapes_of

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation"
COMMIT = "6afb4730bc5a35a11f7a0097ef94d0d17d3b6772"
FILES = ["src/controller.py", "src/trainer.py", "src/losses/loss_wrapper.py", "src/losses/kd_loss.py",
         "src/losses/classification.py", "src/losses/loss_builder.py", "src/utils/ema.py", "src/models/resnet.py"]
EPOCH, STEPS, LATE_STEP = 100, 3, 39100  # the epoch of the steps; steps from global step 0; a global step past 1000
NUM_CLASSES, BATCH, VIEWS = 10, 2, 3


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in model.state_dict().items()}


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, VIEWS, 3, 32, 32, generator=gen)  # the reproduction's input: N x views x C x H x W
    y = torch.tensor([3, 7])
    arrays = {"batch/x": x, "batch/y": y}
    with common.checkout(args.repo, COMMIT) as root, common.cpu_only():
        package = types.ModuleType("src")  # src/__init__.py imports the data and logging stack: not needed here
        package.__path__ = [str(root / "src")]
        sys.modules["src"] = package
        resnet = common.import_file(root, "src/models/resnet.py", "src.models.resnet")
        ema = common.import_file(root, "src/utils/ema.py", "src.utils.ema")
        controller = common.import_file(root, "src/controller.py", "src.controller")
        from src.losses import LossBuilder, LossWrapper

        model = resnet.ResNet(resnet.BasicBlock, [1, 1, 1], num_classes=NUM_CLASSES, ema=False)
        mean = resnet.ResNet(resnet.BasicBlock, [1, 1, 1], num_classes=NUM_CLASSES, ema=True)
        shapes = shapes_of(model)
        model.load_state_dict(rule_weights(dict(shapes)))
        mean_weights = rule_weights({f"mean.{k}": s for k, s in shapes})
        mean.load_state_dict({k[len("mean."):]: v for k, v in mean_weights.items()})
        wrapper = LossWrapper([LossBuilder.load(n) for n in ("CrossEntropyLoss", "KDLoss", "PMLoss")], [1.0] * 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        step = controller.Controller(loss_wrapper=wrapper, model=model, mean_model=mean, optimizer=optimizer)
        model.train()
        mean.train()  # as Trainer.train
        for k in range(STEPS):
            loss, _, _ = step.train_step(x, y, EPOCH)
            arrays[f"loss/step{k}"] = loss.detach().reshape(1)
            arrays[f"state/grad_projection/step{k}"] = gradient_projections(
                {n: p.grad for n, p in model.named_parameters()})
            ema.update_ema_variables(model, mean, alpha=0.999, global_step=k)
        arrays["state/projection/model"] = gradient_projections(float_state(model))
        arrays["state/projection/mean"] = gradient_projections(float_state(mean))
        ema.update_ema_variables(model, mean, alpha=0.999, global_step=LATE_STEP)
        arrays["state/projection/mean_late"] = gradient_projections(float_state(mean))
        arrays["state/rampup"] = torch.tensor([wrapper.compute_rampup_weight(e) for e in range(300)],
                                              dtype=torch.float64)
    case = {"network": "src/models/resnet.py: ResNet(BasicBlock, [1, 1, 1])", "num_classes": NUM_CLASSES,
            "batch": BATCH, "views": VIEWS, "epoch": EPOCH, "steps": STEPS, "late_global_step": LATE_STEP,
            "optimizer": "SGD lr 0.1 momentum 0.9 nesterov weight_decay 5e-4", "temperature": 3.0, "ema_decay": 0.999,
            "weights": "tests/golden/rule_weights.py (by name; the mean network's under 'mean.')",
            "shapes": shapes, "gradient_names": [n for n, _ in model.named_parameters()],
            "state_names": list(model.state_dict()), "mean_state_names": list(mean.state_dict())}
    common.write(args.out, "pcl_step", REPOSITORY, COMMIT, FILES, case, arrays)


if __name__ == "__main__":
    main()
