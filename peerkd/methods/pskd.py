"""PS-KD: Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets", ICCV 2021.

One network; in epoch t (1-based, of T) it learns from targets that blend the label with its own prediction for the
same image in the previous epoch:

    y_soft = (1 - a_t) y + a_t P_{t-1}(x),   a_t = a_T * t / T,   L = CE(P_t(x), y_soft) = -sum_k y_soft,k log P_t,k

``P_{t-1}(x)`` is read from a per-sample memory (indexed by ``Batch.index``) before the step and replaced by the
softmax of this step's logits after it, as in the authors' code: the prediction made while training on the (augmented)
image in the previous epoch, not a separate pass. An image never seen yet reads as its one-hot label, so the first
epoch trains on ``y`` alone (``a_1 y + (1 - a_1) y = y``).

Memory (see :class:`~peerkd.methods.parts.self_distillation.PredictionMemory`): a buffer of the method, saved in every
checkpoint and restored on resume; ``a_t`` is a buffer too (a resume in the middle of an epoch keeps it). Under DDP
each rank writes the predictions of every rank (all-gather), and ``ddp_broadcast_buffers = False`` keeps DDP from
overwriting it from rank 0. It lives on the method's device; for ImageNet-scale data choose ``memory_dtype:
float16`` and ``memory_topk: 10`` (51 MB instead of 5.1 GB for 1.28 M images x 1000 classes). ``predict`` gives
``net``; export gives the plain network.

Held against the authors' code (lgcnsai/PS-KD-Pytorch ``main.py`` ``train`` with ``loss/pskd_loss.py``:
``tests/golden/test_pskd.py``): alpha_t (``alpha_T * (epoch + 1) / end_epoch``), the soft targets (the memory holds
the one-hot label before an image's first epoch, then the softmax of its last step's logits), the batch-mean soft
cross-entropy, every step's loss and logits, the gradients and the memory over three epochs agree to 1e-5. The
networks of PS-KD's CIFAR-100 table are ``preact_resnet18``, ``densenet121_cifar``, ``resnext29_8x64d`` (same
tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from peerkd.losses import soft_ce
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.methods.parts.self_distillation import MemoryDtype, PredictionMemory, label_distribution, progressive_alpha
from peerkd.models import build_model
from peerkd.methods.parts.cohort import export_single_network


@register_method("pskd")
class PSKD(Method):
    """Progressive self-knowledge distillation (Kim et al. 2021): targets blend labels with last epoch's predictions."""

    ddp_broadcast_buffers = False  # the memory is kept in sync by all-gathered writes

    @dataclass
    class Options:
        model: str = "resnet18"  # the network trained (any registered model)
        model_options: dict = field(default_factory=dict)  # keyword arguments of the model's factory
        alpha_final: float = 0.8  # a_T: weight of the past prediction in the last epoch (PS-KD's CIFAR-100 value)
        memory_dtype: MemoryDtype = "float32"  # storage of the memory: float32, float16 or bfloat16 (2 bytes per
        # entry)
        memory_topk: int = 0  # 0 stores whole distributions; k > 0 stores the top k classes (values + int16 ids)

    def __init__(self, options, task):
        super().__init__(options, task)
        self.model = build_model(options.model, task.num_classes, key="method.model", **options.model_options)
        self.memory = PredictionMemory(task.num_train, task.num_classes, options.memory_dtype, options.memory_topk)
        self.register_buffer("alpha", torch.zeros(()))  # a_t of the current epoch

    def on_epoch_start(self, epoch, epochs):
        self.alpha.fill_(progressive_alpha(epoch, epochs, self.options.alpha_final))

    def forward(self, batch) -> StepOutput:
        logits = self.model(batch.view(0))
        labels = label_distribution(batch, self.task.num_classes)
        target = (1 - self.alpha) * labels + self.alpha * self.memory.read(batch.index, labels)
        loss = soft_ce(logits, target)
        self.memory.write(batch.index, F.softmax(logits.detach().float(), dim=-1))
        return StepOutput(loss, {"ce_soft": loss.detach(), "alpha": self.alpha.clone()})

    def predict(self, x):
        return {"net": self.model(x)}

    def export(self, key=None):
        return export_single_network(self.model, key)
