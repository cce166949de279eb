"""BYOT: Zhang, Song, Gao, Chen, Bao, Ma, "Be Your Own Teacher: Improve the Performance of Convolutional Neural
Networks via Self Distillation", ICCV 2019.

One network cut into its N stages; after every shallow stage i a bottleneck adapter (bringing the map to the deepest
map's channels and resolution) and a classifier; the deepest classifier is the network's own head. With ``P_i`` the
softmax of classifier i, ``F_i`` its feature and ``P_N``, ``F_N`` the deepest's (both detached: the deepest teaches):

    L = sum_{i=1..N} (1 - a) CE(P_i, y) + a T^2 KL(P_N^T || P_i^T) + lambda ||F_i - F_N||_2^2

(the KL and hint terms vanish for i = N). ``predict`` gives every classifier (``classifier1`` shallowest ..
``classifier{N}`` deepest) and ``ensemble``, the mean of their probabilities (BYOT's Table 2 / Chottananurak et al.'s
Table 2). The deployed network is the plain backbone (the deepest classifier).

Readings where the paper leaves a choice:
- The adapters (``adapter``): the paper only says "bottleneck layer". Default ``bottleneck``, the BYOT CIFAR code's
  one bottleneck per shallow stage (1x1 to a quarter of the deepest width, k x k stride k, 1x1; luanyunteng/
  pytorch-be-your-own-teacher, ``models/resnet.py``); ``sepconv`` the authors' release (attention gate + separable
  convs; ArchipLab-LinfengZhang/pytorch-self-distillation-final, ``resnet.py``); ``chain`` peerkd's earlier chain of
  3x3 stride-2 bottlenecks. Counts and evidence: :mod:`peerkd.methods.parts.stage_adapters`.
- ``F_i``: the pooled feature vector after the adapter (the input of classifier i), ``F_N`` the pooled last map;
  the squared norm is summed over channels and averaged over the batch (``hint_reduction: sum`` sums it over the
  batch, as the BYOT code luanyunteng/pytorch-be-your-own-teacher ``train.py`` does for its lambda = 1e-6; the
  lambda = 0.03 here is read as a per-image weight).
- ``a = 0.3``, ``lambda = 0.03``, ``T = 3``: the values of the authors' released CIFAR recipe as we read it (the
  paper names them hyper-parameters without values in its text).
- The deepest classifier's CE weight: eq. (the sum over all i) gives it ``1 - a`` like every classifier; the
  training code published with BYOT's lineage gives it a plain ``CE(P_N, y)`` (weight 1) and ``(1 - a)`` only to the
  shallow ones. The paper is followed; ``deepest_full_ce: true`` switches to the code's weight 1.
- ``distil_blocks`` restricts the KL and hint terms to some shallow classifiers (all by default); CE stays on all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.methods.parts.self_distillation import (HintReduction, StageClassifierNet, label_distribution,
                                                    self_kd_terms)
from peerkd.methods.parts.stage_adapters import AdapterDesign


@register_method("byot")
class BYOT(Method):
    """Be Your Own Teacher (Zhang et al. 2019): a classifier after every stage, the deepest one teaching the rest."""

    @dataclass
    class Options:
        model: str = "resnet18"  # the backbone cut after each of its stages (4 for the CIFAR ResNet-18/50)
        model_options: dict = field(default_factory=dict)  # keyword arguments of the backbone's factory
        kl_weight: float = 0.3  # a: share of the KL to the deepest (1 - a goes to CE), BYOT's CIFAR value
        hint_weight: float = 0.03  # lambda: weight of the feature hint, per squared feature unit, BYOT's value
        temperature: float = 3.0  # T softening both sides of the KL (T^2 scaling keeps gradients comparable)
        distil_blocks: list[int] = field(default_factory=list)  # 1-based shallow classifiers given KL + hint; [] = all
        deepest_full_ce: bool = False  # False: (1 - a) CE on the deepest (the paper's sum); True: weight 1 (their code)
        hint_reduction: HintReduction = "mean"  # the hint over the batch: "mean" (per-image lambda) or "sum" (BYOT
        # code's)
        adapter: AdapterDesign = "bottleneck"  # shallow-stage adapter design: bottleneck (BYOT CIFAR code), sepconv,
        # chain

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # a classifier after every stage

    def __init__(self, options, task):
        super().__init__(options, task)
        self.net = StageClassifierNet(options.model, task.num_classes, options.model_options, task.image_size,
                                      adapter=options.adapter)
        bad = [b for b in options.distil_blocks if not 1 <= b < self.net.num_classifiers]
        if bad:
            from peerkd.core.errors import ConfigError
            raise ConfigError(f"method.distil_blocks: {bad} are not shallow classifiers "
                              f"(1..{self.net.num_classifiers - 1})")

    def forward(self, batch) -> StepOutput:
        logits, features = self.net(batch.view(0))
        target = label_distribution(batch, self.task.num_classes)
        o = self.options
        loss, logs = self_kd_terms(logits, features, target, kl_weight=o.kl_weight, hint_weight=o.hint_weight,
                                   temperature=o.temperature, distil_blocks=o.distil_blocks, include_deepest=True,
                                   deepest_ce_weight=1.0 if o.deepest_full_ce else None,
                                   hint_reduction=o.hint_reduction)
        return StepOutput(loss, logs)

    def predict(self, x):
        return self.net.predictions(x)

    def export(self, key=None):
        return self.net.export(key)

