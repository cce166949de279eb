"""CS-KD: class-wise self-knowledge distillation. Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via
Self-knowledge Distillation", CVPR 2020.

One network. Every sample x comes with another training sample x' of the same class (the loader's class pairs,
``Batch.pair_x``); the network's softened prediction on x' is the target for its prediction on x:

    L = CE(z(x), y) + lambda_cls * T^2 * KL(softmax(z(x') / T) || softmax(z(x) / T)),   T = 4, lambda_cls = 1

Readings: the target z(x') is computed without gradient (as the paper's Algorithm 1 fixes the copy of the
parameters), in the same training mode, so BatchNorm statistics also see the partners; the partner is drawn
uniformly among the *other* training samples of the class with a fresh random crop and flip, both from the loader's
``(seed, epoch)`` generator; CE is on x only. With a mixed batch (``data.mixing``) CE uses the mixed label while
the partners stay unmixed.

Held against the authors' code (alinlab/cs-kd ``train.py`` ``train`` with ``--cls``: ``tests/golden/test_cskd.py``):
the anchor-half CE, the class-wise term (``KLDivLoss(sum) * T^2 / batch``, T = 4, lambda = 1), the gradients (the
partner half under no_grad gets none) and the BN statistics after each step (the partner pass in training mode moves
them) agree to 1e-5. One difference stays, in the loader, not the step: the reference draws a partner with
``random.choice`` among all images of the class, the anchor itself included (1 / 500 on CIFAR-100); peerkd's loader
draws among the others. The code's CIFAR ResNet-18 and DenseNet-121 are ``preact_resnet18`` and
``densenet121_cifar``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peerkd.losses import hard_ce, kd_kl
from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.methods.parts.cohort import build_cohort, export_member
from peerkd.core.registry import register_method


@register_method("cskd")
class CSKD(Method):
    """Class-wise self-KD (Yun et al. 2020): match the prediction of another sample of the same class."""

    @dataclass
    class Options:
        model: str = "resnet32"  # the one network trained
        model_options: dict = field(default_factory=dict)  # keyword arguments for its factory
        temperature: float = 4.0  # T: the paper's CIFAR / fine-grained setting
        cls_weight: float = 1.0  # lambda_cls: the paper's setting for CIFAR-100

    def __init__(self, options, task):
        super().__init__(options, task)
        self.models = build_cohort([options.model], task.num_classes, options.model_options)

    @classmethod
    def data_request(cls, options):
        return DataRequest(class_pairs=True)

    def forward(self, batch) -> StepOutput:
        if batch.pair_x is None:
            raise ValueError("CS-KD needs class pairs: the loader must honour DataRequest(class_pairs=True)")
        model = self.models[0]
        logits = model(batch.view(0))
        with torch.no_grad():
            pair_logits = model(batch.pair_x)
        ce = hard_ce(logits, batch)
        cls = kd_kl(logits, pair_logits, self.options.temperature)
        return StepOutput(ce + self.options.cls_weight * cls, {"ce": ce.detach(), "cls": cls.detach()})

    def predict(self, x):
        return {"net": self.models[0](x)}

    def export(self, key=None):
        if key in (None, "net"):
            return export_member(self.models, "peer0")
        raise KeyError(f"cannot export '{key}': CS-KD exports 'net'")
