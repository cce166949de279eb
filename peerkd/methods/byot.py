"""BYOT: Zhang, Song, Gao, Chen, Bao, Ma, "Be Your Own Teacher: Improve the Performance of Convolutional Neural
Networks via Self Distillation", ICCV 2019.

One network cut into its N stages; after every shallow stage i an adapter (bringing the map to the deepest map's
channels and resolution) and a classifier; the deepest classifier is the network's own head. With ``P_i`` the
softmax of classifier i, ``F_i`` its feature (the pooled adapter output, the classifier's input) and ``P_N``, ``F_N``
the deepest's (both detached: the deepest teaches), the paper's loss is

    L = sum_{i=1..N} (1 - a) CE(P_i, y) + a KL(P_N^T || P_i^T) + lambda ||F_i - F_N||_2^2

(the KL and hint terms vanish for i = N). ``predict`` gives every classifier (``classifier1`` shallowest ..
``classifier{N}`` deepest) and ``ensemble``, the mean of their probabilities (BYOT's Table 2 / Chottananurak et al.'s
Table 2). The deployed network is the plain backbone (the deepest classifier).

Two public code bases implement it, each with a loss of its own form; ``recipe`` runs one of them exactly (held
against each in ``tests/golden/test_byot_release.py`` / ``test_byot_luanyunteng.py``: outputs, loss and every
gradient of one step), and its numbers ``a`` / ``lambda`` / ``T`` are only meaningful in that form:

- ``"release"`` (default): the authors' release, ArchipLab-LinfengZhang/pytorch-self-distillation-final,
  ``train.py`` (``--loss_coefficient 0.3 --feature_loss_coefficient 0.03 --temperature 3``, the defaults here):
  ``L = CE(P_N, y) + sum_{i<N} [(1 - a) CE(P_i, y) + a CE(P_N^T, P_i^T)] + lambda sum_{i<N-1} ||A_i(F_i) - F_N||_2``:
  the soft cross-entropy at T *without* ``T^2`` (its distillation gradient is 1/9 of a ``T^2`` KL's at T = 3), the
  hint an *unsquared* Euclidean norm over the whole batch of a Linear adaptation layer's output ``A_i(F_i)``
  (C -> C, built here with the network; the release adds them in its first iteration, and builds one for
  classifier N - 1 too, which it never uses, so it is not built here: 262,656 parameters on ResNet-18), and no hint
  on classifier N - 1 (its ``if index != 1``). Its network is the ``adapter: sepconv`` design.
- ``"luanyunteng"``: the BYOT CIFAR code luanyunteng/pytorch-be-your-own-teacher, ``train.py`` (``--alpha 0.1
  --beta 1e-6 --temperature 3``, the values paper 004 takes): ``L = (1 - a) sum_{i<=N} CE(P_i, y)
  + a T^2 sum_{i<N} CE(P_N^T, P_i^T) + lambda sum_{i<N} sum_{batch, channels} (F_i - F_N)^2`` (squared differences
  summed over the batch, masked to entries where either side is positive: a no-op on post-ReLU features). Its
  network is the ``adapter: bottleneck`` design.
- ``"paper"``: the equation above as peerkd read it before either code was checked: ``(1 - a) CE`` on every
  classifier, ``a T^2 KL``, the squared hint summed over channels and averaged over the batch (``lambda`` per image).

The deepest classifier's CE weight therefore depends on the code: the release gives it weight 1 (``criterion(outputs
[0], labels)``) and ``1 - a`` only to the shallow ones; luanyunteng's code and the paper's sum give every classifier,
the deepest included, ``1 - a``.

Other readings:
- The adapters (``adapter``): the paper only says "bottleneck layer". ``sepconv`` (default, with the default
  recipe) the authors' release (attention gate + separable convs; ``resnet.py``); ``bottleneck`` the BYOT CIFAR
  code's one bottleneck per shallow stage (luanyunteng/pytorch-be-your-own-teacher, ``models/resnet.py``);
  ``chain`` peerkd's earlier chain of 3x3 stride-2 bottlenecks. Counts and evidence:
  :mod:`peerkd.methods.parts.stage_adapters`. ``recipe`` and ``adapter`` are separate switches (paper 004's
  ResNeXt-50 runs the release's adapters with luanyunteng's loss weights); a config that follows one code base sets
  both.
- ``distil_blocks`` restricts the logit and hint terms to some shallow classifiers (all by default); CE stays on all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.methods.parts.self_distillation import (ByotRecipe, StageClassifierNet, hint_blocks, label_distribution,
                                                    self_kd_terms)
from peerkd.methods.parts.stage_adapters import AdapterDesign


@register_method("byot")
class BYOT(Method):
    """Be Your Own Teacher (Zhang et al. 2019): a classifier after every stage, the deepest one teaching the rest."""

    @dataclass
    class Options:
        model: str = "resnet18"  # the backbone cut after each of its stages (4 for the CIFAR ResNet-18/50)
        model_options: dict = field(default_factory=dict)  # keyword arguments of the backbone's factory
        recipe: ByotRecipe = "release"  # whose loss form: the authors' release (the weights below are its
        # defaults), luanyunteng's CIFAR code (a 0.1, lambda 1e-6) or the paper's equation; see the docstring
        kl_weight: float = 0.3  # a: weight of the logit distillation (1 - a on the shallow CE), the release's 0.3
        hint_weight: float = 0.03  # lambda: weight of the feature hint in the recipe's unit, the release's 0.03
        temperature: float = 3.0  # T softening both sides of the logit term, the release's (and luanyunteng's) 3
        distil_blocks: list[int] = field(default_factory=list)  # 1-based shallow classifiers given KL + hint; [] = all
        adapter: AdapterDesign = "sepconv"  # shallow-stage adapter design: sepconv (the release's, as the default
        # recipe), bottleneck (luanyunteng's CIFAR code), chain

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
        self.hint_adapters = nn.ModuleDict()  # the release's Linear adaptation layer of each hinted classifier
        if options.recipe == "release":
            width = self.net.backbone.head.fc.in_features
            for i in hint_blocks("release", self.net.num_classifiers, options.distil_blocks):
                self.hint_adapters[str(i)] = nn.Linear(width, width)

    def forward(self, batch) -> StepOutput:
        logits, features = self.net(batch.view(0))
        target = label_distribution(batch, self.task.num_classes)
        o = self.options
        loss, logs = self_kd_terms(logits, features, target, kl_weight=o.kl_weight, hint_weight=o.hint_weight,
                                   temperature=o.temperature, distil_blocks=o.distil_blocks, include_deepest=True,
                                   recipe=o.recipe, hint_adapters=self.hint_adapters)
        return StepOutput(loss, logs)

    def predict(self, x):
        return self.net.predictions(x)

    def export(self, key=None):
        return self.net.export(key)

