"""Golden fixture of yuanli2333/Teacher-free-Knowledge-Distillation (Yuan et al., CVPR 2020), run from a checkout at
the pinned commit: the release's ``my_loss_function.loss_kd_self`` (Tf-KD_self) and ``loss_kd_regularization``
(Tf-KD_reg, the virtual teacher) on a batch of 8 logits, at 100 and at 10 classes, with the settings of its CIFAR-100
ResNet-18 experiments (``experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json``: alpha 0.95,
T 6, multiplier 50; ``experiments/base_experiments/base_resnet18/params.json``: reg_alpha 0.1, reg_temperature 20,
multiplier 100), and for the self term alone (alpha 1). The network is left out (the release's networks are not
peerkd's and the loss sees only the logits): the student's logits are the one parameter, and the fixture holds the
loss and its gradient with respect to them.

    python tools/golden/tfkd.py --repo /work/.mirror/yuanli2333+Teacher-free-Knowledge-Distillation/repo
"""
from __future__ import annotations

import json
import types

import common
import torch

REPOSITORY = "yuanli2333/Teacher-free-Knowledge-Distillation"
COMMIT = "d000ab378a409535a5f5f645b473e05e27529a02"
BATCH = 8
SELF_PARAMS = "experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json"
REG_PARAMS = "experiments/base_experiments/base_resnet18/params.json"


def main() -> None:
    options = common.arguments(__doc__.splitlines()[0])
    arrays, cases = {}, {}
    with common.checkout(options.repo, COMMIT) as root, common.cpu_only():
        losses = common.import_file(root, "my_loss_function.py", "tfkd_losses")
        self_params = json.loads((root / SELF_PARAMS).read_text())
        reg_params = json.loads((root / REG_PARAMS).read_text())
        for classes in (100, 10):
            gen = torch.Generator().manual_seed(classes)
            student = 2.0 * torch.randn(BATCH, classes, generator=gen)
            teacher = 2.0 * torch.randn(BATCH, classes, generator=gen)
            labels = torch.randint(classes, (BATCH,), generator=gen)
            arrays.update({f"batch/logits{classes}": student, f"batch/teacher{classes}": teacher,
                           f"batch/y{classes}": labels})
            runs = {
                f"self{classes}": lambda z, y=labels, t=teacher: losses.loss_kd_self(
                    z, y, t, types.SimpleNamespace(**self_params)),
                f"selfterm{classes}": lambda z, y=labels, t=teacher: losses.loss_kd_self(
                    z, y, t, types.SimpleNamespace(**{**self_params, "alpha": 1.0})),  # the self-teacher term
                # alone: (1 - 1) CE + 1 x the term
                f"reg{classes}": lambda z, y=labels: losses.loss_kd_regularization(
                    z, y, types.SimpleNamespace(**reg_params)),
            }
            for name, run in runs.items():
                logits = student.clone().requires_grad_(True)
                loss = run(logits)
                loss.backward()
                arrays[f"loss/{name}"] = loss.detach()
                arrays[f"grads/{name}/logits"] = logits.grad
        cases = {"batch": BATCH, "classes": [100, 10], "self": {k: self_params[k] for k in
                                                                 ("alpha", "temperature", "multiplier")},
                 "reg": {k: reg_params[k] for k in ("reg_alpha", "reg_temperature", "multiplier")},
                 "correct_prob": "0.99 (fixed in loss_kd_regularization)"}
    common.write(options.out, "tfkd_losses", REPOSITORY, COMMIT, ["my_loss_function.py", SELF_PARAMS, REG_PARAMS],
                 cases, arrays)


if __name__ == "__main__":
    main()
