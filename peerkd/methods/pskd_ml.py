"""PS-KD + BYOT + DMFL: Chottananurak, Jeong, Kabir, Phisannupawong, "Progressive Self-Knowledge Distillation with
Mutual Learning" (KAIST).

One network cut into its N stages, a classifier after each (BYOT); P_i, F_i classifier i's softmax and feature, i = N
the deepest (the network's own output). With switches ``pskd``, ``byot``, ``dmfl`` (every cell of its Table 1):

    L = L_CE + L_Self-KD + L_DMFL
    L_CE      = CE(P_N(x), y_soft),   y_soft = (1 - a_t) y + a_t P_N^{prev}(x)          (PS-KD; y_soft = y without it)
    L_Self-KD = sum_{i=1..N} (1 - a) CE(P_i, y_soft) + a T^2 KL(P_N^T || P_i^T) + lambda ||F_i - F_N||_2^2   (eq. 2)
    L_DMFL    = 1/(N-1) sum_{i<N} KL(f_i || f_N) + KL(f_N || f_i),   f = softmax(F / tau)  (eq. 3)

with a_t = a_T t / T (t the 1-based epoch, a_T = 0.8), a = 0.1, lambda = 1e-6 (the paper's values).

The paper's a = 0.1 and lambda = 1e-6 are the defaults of the BYOT code it builds on (luanyunteng/
pytorch-be-your-own-teacher, ``train.py``: ``--alpha 0.1``, ``--beta 1e-6``, ``--temperature 3``); where the paper
is silent that code decides the scale of each term:

- the hint ``||F_i - F_N||^2`` is *summed over the batch* (that code's ``feature_loss_function`` returns
  ``.sum()`` of the squared differences of the pooled features, masked to entries where either side is positive:
  a no-op for post-ReLU features), so lambda = 1e-6 multiplies a batch sum; a batch mean would make it 128 x
  weaker at batch 128 (``hint_reduction: mean`` is that reading);
- the KL runs at T = 3 with the T^2 factor (that code's ``kd_loss_function`` on ``softmax(output / T)`` times
  ``T**2``); eq. 2 writes plain probabilities, but the paper takes a and lambda from that code, and its a was
  tuned with T = 3 (``temperature: 1`` is the literal eq. 2).
- the deepest classifier's CE weight is 1 + (1 - a): the paper is explicit, L = L_CE + L_Self-KD with L_CE the
  PS-KD CE on the deepest classifier and eq. 2 summing i = 1..N (its (1 - a) CE term included). The BYOT code has no
  L_CE and gives the deepest classifier (1 - a) alone; ``self_kd_includes_deepest: false`` gives it weight 1.

Readings where the paper leaves a choice:
- ``P^{prev}`` is the deepest classifier's prediction for the same image in the previous epoch, kept in a per-sample
  memory as in :mod:`peerkd.methods.pskd` (same storage options, checkpointed, all-gathered under DDP); the same
  y_soft is the CE target of every classifier ("distilled to each classifier").
- KL and hint: the deepest side is detached (the deepest teaches, as in BYOT); eq. 2's D_KL(P_i, P_N) is read as
  KL(P_N || P_i), at T = 3 (above); KL and hint vanish for i = N.
- F_i: the pooled feature vector after classifier i's adapter (the FC's input), F_N the pooled last map, as the BYOT
  code's ``middle*_fea`` / ``final_fea``. The adapter design (``adapter``) follows the code behind Table 1's
  parameter counts (see :mod:`peerkd.methods.parts.stage_adapters`): ``bottleneck`` (BYOT's CIFAR code: ResNet-18
  13.0 M, ResNet-50 50.4 M) by default, ``sepconv`` in the ResNeXt-50 configs (the BYOT authors' release: 37.9 M);
  the hint is the squared norm summed over channels and over the batch (above).
- DMFL's feature-to-distribution mapping: softmax over the channels of the pooled feature vector, temperature
  ``dmfl_temperature`` (1). "Both forward and backward directions" is read as DML: each KL direction trains its
  second argument with the first fixed (``dmfl_detach_targets``), so KL(f_i || f_N) moves the deepest feature and
  KL(f_N || f_i) the shallow one; ``false`` back-propagates through both sides of both terms.
- Without BYOT (rows PS-KD, DMFL, PS-KD+DMFL) no shallow classifiers exist; DMFL alone still builds the adapters
  (its features) but no shallow FC layers. With BYOT, ``distil_blocks`` lists the shallow classifiers that carry
  the KL + hint terms (Table 3: [1, 2, 3], [2, 3], [3]); CE stays on every classifier; DMFL spans all of them.
- The number of backbone blocks (Table 4: 2, 3 or 4) is the backbone's ``num_stages`` model option: the network
  is truncated after that many stages and its classifier follows the last one kept.
- ``predict``: ``classifier1`` (shallowest) .. ``classifier{N}`` (deepest) and ``ensemble`` (mean probability).
  The paper's Table 2 lists "Classifier 4/4, 3/4, 2/4, 1/4" with 3/4 the weakest, so its shallow columns appear in
  reverse depth order; here the number is always the depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from peerkd.losses import soft_ce
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.methods.parts.self_distillation import (HintReduction, MemoryDtype, PredictionMemory, StageClassifierNet,
                                                    dmfl_loss, label_distribution, progressive_alpha, self_kd_terms)
from peerkd.methods.parts.stage_adapters import AdapterDesign


@register_method("pskd_ml")
class PSKDMutualLearning(Method):
    """PS-KD + BYOT + deep mutual feature learning in one network (Chottananurak et al.), each part switchable."""

    ddp_broadcast_buffers = False  # the PS-KD memory is kept in sync by all-gathered writes

    @dataclass
    class Options:
        model: str = "resnet18"  # the backbone cut after each stage (the paper: resnet18, resnet50, resnext50_32x4d)
        model_options: dict = field(default_factory=dict)  # factory keywords; num_stages: N backbone blocks (Table 4)
        pskd: bool = True  # progressive soft targets from last epoch's predictions (L_CE with y_soft)
        byot: bool = True  # shallow classifiers with L_Self-KD (eq. 2)
        dmfl: bool = True  # deep mutual feature loss (eq. 3)
        alpha_final: float = 0.8  # a_T of PS-KD: weight of the past prediction in the last epoch (the paper's 0.8)
        kl_weight: float = 0.1  # a of eq. 2: KL share (1 - a on CE), the paper's 0.1
        hint_weight: float = 1e-6  # lambda of eq. 2, per squared feature unit, the paper's 1e-6
        temperature: float = 3.0  # T of eq. 2's KL: the BYOT code's 3, the code a and lambda come from (1: literal)
        hint_reduction: HintReduction = "sum"  # hint over the batch: "sum" (the BYOT code, lambda's unit) or "mean"
        distil_blocks: list[int] = field(default_factory=list)  # 1-based shallow classifiers with KL + hint; [] = all
        self_kd_includes_deepest: bool = True  # eq. 2's sum runs to N: (1 - a) CE on the deepest besides L_CE
        dmfl_temperature: float = 1.0  # tau of the feature-to-distribution softmax (none in the paper: 1)
        dmfl_detach_targets: bool = True  # each KL direction trains its second argument only (DML's reading)
        memory_dtype: MemoryDtype = "float32"  # PS-KD memory storage: float32, float16 or bfloat16 (2 bytes per
        # entry)
        memory_topk: int = 0  # 0 stores whole distributions; k > 0 the top k classes (ImageNet: 10)
        adapter: AdapterDesign = "bottleneck"  # shallow-stage adapter design: bottleneck (BYOT CIFAR code), sepconv,
        # chain

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # a classifier (or feature tap) after every stage

    def __init__(self, options, task):
        super().__init__(options, task)
        self.net = StageClassifierNet(options.model, task.num_classes, options.model_options, task.image_size,
                                      adapters=options.byot or options.dmfl, shallow_heads=options.byot,
                                      adapter=options.adapter)
        if options.byot:
            bad = [b for b in options.distil_blocks if not 1 <= b < self.net.num_classifiers]
            if bad:
                from peerkd.core.errors import ConfigError
                raise ConfigError(f"method.distil_blocks: {bad} are not shallow classifiers "
                                  f"(1..{self.net.num_classifiers - 1})")
        if options.pskd:
            self.memory = PredictionMemory(task.num_train, task.num_classes, options.memory_dtype,
                                           options.memory_topk)
        self.register_buffer("alpha", torch.zeros(()))  # a_t of the current epoch (0 without PS-KD)

    def on_epoch_start(self, epoch, epochs):
        if self.options.pskd:
            self.alpha.fill_(progressive_alpha(epoch, epochs, self.options.alpha_final))

    def forward(self, batch) -> StepOutput:
        o = self.options
        logits, features = self.net(batch.view(0))
        labels = label_distribution(batch, self.task.num_classes)
        target = labels
        if o.pskd:
            target = (1 - self.alpha) * labels + self.alpha * self.memory.read(batch.index, labels)
        main = soft_ce(logits[-1], target)
        loss, logs = main, {"ce_main": main.detach()}
        if o.byot:
            self_kd, parts = self_kd_terms(logits, features, target, kl_weight=o.kl_weight,
                                           hint_weight=o.hint_weight, temperature=o.temperature,
                                           distil_blocks=o.distil_blocks, include_deepest=o.self_kd_includes_deepest,
                                           hint_reduction=o.hint_reduction)
            loss = loss + self_kd
            logs.update(parts)
            logs["self_kd"] = self_kd.detach()
        if o.dmfl:
            mutual = dmfl_loss(features, o.dmfl_temperature, o.dmfl_detach_targets)
            loss = loss + mutual
            logs["dmfl"] = mutual.detach()
        if o.pskd:
            self.memory.write(batch.index, F.softmax(logits[-1].detach().float(), dim=-1))
        return StepOutput(loss, logs)

    def predict(self, x):
        return self.net.predictions(x)

    def export(self, key=None):
        return self.net.export(key)
