"""DDGSD: data-distortion guided self-distillation. Xu & Liu, "Data-Distortion Guided Self-Distillation for Deep
Neural Networks", AAAI 2019.

One network sees two independently distorted (augmented) views x^1, x^2 of each image of the batch and learns
consistent posteriors and consistent global feature distributions across them:

    L = sum_v CE(z^v, y) + kl_weight * sum_v T^2 KL(softmax(z^{3-v} / T) || softmax(z^v / T))
          + mmd_weight * || mean_i f_i^1 - mean_i f_i^2 ||_2^2

with f^v the pooled penultimate features (``head.features``).

Readings: the posterior consistency is the symmetric KL, each direction with its target detached
(``detach_targets``, as a self-distillation target; false lets both directions' gradients through both views); the
MMD is the linear-kernel (mean-embedding) MMD between the two views' feature batches, the same form as CutⁿMix's
eq. 9; T = 1 (plain posteriors) and both weights 1, the unweighted sum of the paper's loss terms. With a mixed batch
(``data.mixing``) both views share the partners and lam, so CE uses the mixed label for each.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from peerkd.losses import hard_ce, kd_kl, mean_feature_mmd
from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.methods.parts.cohort import build_cohort, export_member
from peerkd.core.registry import register_method


@register_method("ddgsd")
class DDGSD(Method):
    """Data-distortion guided self-distillation (Xu & Liu 2019): two views, KL between them plus feature MMD."""

    @dataclass
    class Options:
        model: str = "resnet32"  # the one network trained
        model_options: dict = field(default_factory=dict)  # keyword arguments for its factory
        temperature: float = 1.0  # T of the posterior consistency; 1: the paper matches the plain posteriors
        kl_weight: float = 1.0  # weight of the symmetric KL (the paper sums its terms unweighted)
        mmd_weight: float = 1.0  # weight of the feature MMD (likewise)
        detach_targets: bool = True  # each KL direction's target carries no gradient

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("features",)}  # feature MMD between the two views' pooled features

    def __init__(self, options, task):
        super().__init__(options, task)
        self.models = build_cohort([options.model], task.num_classes, options.model_options)

    @classmethod
    def data_request(cls, options):
        return DataRequest(views=2)

    def forward(self, batch) -> StepOutput:
        opts = self.options
        model = self.models[0]
        (f1, z1), (f2, z2) = model.features_and_logits(batch.view(0)), model.features_and_logits(batch.view(1))
        target = (lambda t: t.detach()) if opts.detach_targets else (lambda t: t)
        ce = hard_ce(z1, batch) + hard_ce(z2, batch)
        kl = kd_kl(z1, target(z2), opts.temperature) + kd_kl(z2, target(z1), opts.temperature)
        mmd = mean_feature_mmd(f1, f2)
        loss = ce + opts.kl_weight * kl + opts.mmd_weight * mmd
        return StepOutput(loss, {"ce": ce.detach(), "kl": kl.detach(), "mmd": mmd.detach()})

    def predict(self, x):
        return {"net": self.models[0](x)}

    def export(self, key=None):
        if key in (None, "net"):
            return export_member(self.models, "peer0")
        raise KeyError(f"cannot export '{key}': DDGSD exports 'net'")
