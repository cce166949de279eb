"""DLB: Shen, Xu, Yang, Li, Guo, "Self-Distillation from the Last Mini-Batch for Consistency Regularization", CVPR 2022
(arXiv 2203.16172).

One network. Every step sees the ``B`` new images of this step (``x_t``, view 0) and, again, the ``B`` images of the
step before (``x_{t-1}``, view 1: a second, independent augmentation), with the logits ``z_{t-1}`` the network gave
``x_{t-1}`` (view 0) one step before, detached:

    L_t = CE([f(x_{t-1}); f(x_t)], [y_{t-1}; y_t])                   (the mean over all 2B images)
          + alpha * T^2 * KL(softmax(z_{t-1} / T) || softmax(f(x_{t-1}) / T))   (batch mean over the B old images)
    z_t = f(x_t), kept for step t + 1.

On the run's first step there is no previous batch: ``L_1 = CE(f(x_1), y_1)``.

Readings, each from the authors' code (Meta-knowledge-Lab/DLB @ 8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0, ``dlb.py``
``train_one_epoch`` and ``my_dataloader.py``):

- Two views per image (``my_dataloader.py``: ``transform_list`` of ``aug_nums = 2`` RandomCrop(32, 4) +
  HorizontalFlip transforms, stacked per image); the step feeds the current batch's view 0 (``imgs[:, 0]``) and the
  previous batch's view 1 (``pre_images[:, 1]``): ``DataRequest(views=2, previous_batch=True)``.
- The cross-entropy is one ``F.cross_entropy`` over ``torch.cat((out_pre, out))`` with the labels concatenated alike,
  so each of the 2B images weighs 1 / 2B; the KL is ``F.kl_div(log_softmax(out_pre / T), softmax(pre_out.detach() /
  T), reduction="batchmean") * T * T`` (``peerkd.losses.kd_kl``), weighted by ``alpha``.
- The carried logits are the previous step's ``out`` (logits of the previous batch's view 0, made by the weights
  before the previous update, BatchNorm in training mode); ``pre_data`` / ``pre_out`` are returned from the epoch
  and handed to the next, so the first step of every epoch after the first distils from the last step of the epoch
  before; only the run's first step (``pre_data is None``) is cross-entropy alone.
- ``form: released`` (default: the code the authors' numbers come from) runs the network twice, on the current
  batch first and then on the previous one, as ``dlb.py`` does (BatchNorm normalises each batch by its own
  statistics and updates its running statistics twice a step, in that order). ``form: joint`` is the paper's wording
  (its abstract: "constraining half of each mini-batch coinciding with the previous iteration"): one mini-batch of 2B
  images, the previous half first, in one forward (BatchNorm statistics over all 2B); the loss is the same formula.
  ``data.batch_size`` is the new images a step (``--batch_size`` of ``dlb.py``); the paper's mini-batch holds twice
  as many.

State: the carried logits ``carried_logits`` ``(B, K)`` and ``has_previous`` (0.0 until the first step has run) are
buffers, so a checkpoint restores them and a resumed run distils from the same targets (the previous batch itself is
rebuilt by the data pipeline, ``peerkd/data/previous.py``). No host synchronisation: the first step is handled by
multiplying with ``has_previous * batch.prev_valid`` (the joint cross-entropy and the KL by it, the current-batch
cross-entropy by its complement), not by a branch. ``carried_logits`` takes the step's batch shape on the first
forward (and the saved shape when a checkpoint is loaded). Under DDP each rank keeps its own carried logits (the
buffers are kept out of DDP's broadcast); a checkpoint holds rank 0's, so after a resume under DDP the other ranks
restart with cross-entropy alone for one step (their restored logits belong to rank 0's batch).

Deviations from ``dlb.py`` (each kept to peerkd's data pipeline, each documented in the golden test):
- The device loader drops the last partial batch of an epoch (static shapes); ``dlb.py``'s DataLoader keeps it
  (with ``drop_last`` unset, 50000 / 64 leaves a batch of 16 that becomes the next epoch's first previous batch).
- On the run's first step peerkd also runs the network on a placeholder previous batch (the current one's view 1,
  weight 0 in the loss: shapes stay static); its gradient is zero, but BatchNorm's running statistics see it once
  (and in ``form: joint`` it shares the current half's batch statistics on that one step).

T = 3 and alpha = 1 are the paper's setting as a summary of its experiments states it (the paper's PDF was not read
when this was written; ``dlb.py`` takes ``--T`` / ``--alpha`` with no default and its README gives no command).

Held against the authors' code (``tests/golden/test_dlb_step.py``, fixture by ``tools/golden/dlb_step.py``): their
``train_one_epoch`` run on CPU for two epochs of two steps with the same weights and batches, through peerkd's
``PreviousBatchLoader``: every step's loss, the network's outputs on the current and the previous batch, the carried
logits (also across the epoch boundary) and the gradient of every parameter agree to 5e-7 (``fixture.RTOL`` 1e-5).

``predict`` gives ``net``; ``export`` gives the plain network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import kd_kl
from peerkd.models import build_model
from peerkd.methods.parts.cohort import export_single_network

DLBForm = Literal["released", "joint"]
CARRIED_STATE = ("carried_logits", "has_previous")  # buffers each DDP rank keeps for itself


@register_method("dlb")
class DLB(Method):
    """Self-distillation from the last mini-batch (Shen et al. 2022): the previous batch, seen again, distils the
    logits it was given one step before."""

    @dataclass
    class Options:
        model: str = "resnet32"  # the network trained (any registered model; DLB's table: vgg16_okddip, resnet32,
        # resnet110_one, wide_resnet20_8)
        model_options: dict = field(default_factory=dict)  # keyword arguments of the model's factory
        alpha: float = 1.0  # weight of the KL term (the paper's alpha = 1, see above; dlb.py's --alpha has no default)
        temperature: float = 3.0  # T of the softened distributions, > 0 (the paper's tau = 3; dlb.py's --T: none)
        form: DLBForm = "released"  # released: two forwards, current then previous (dlb.py); joint: one forward of
        # the 2B-image mini-batch, previous half first (the paper's wording)

    @classmethod
    def data_request(cls, options) -> DataRequest:
        return DataRequest(views=2, previous_batch=True)

    def __init__(self, options, task):
        if options.temperature <= 0:
            raise ConfigError(f"method.temperature: {options.temperature} must be positive (DLB's paper uses 3)")
        if options.alpha < 0:
            raise ConfigError(f"method.alpha: {options.alpha} must be at least 0 (DLB's paper uses 1)")
        super().__init__(options, task)
        self.model = build_model(options.model, task.num_classes, key="method.model", **options.model_options)
        self.register_buffer("carried_logits", torch.zeros(0, task.num_classes))  # z_{t-1}: (B, K) after a step
        self.register_buffer("has_previous", torch.zeros(()))  # 1.0 once carried_logits holds a step's logits
        self._ddp_params_and_buffers_to_ignore = list(CARRIED_STATE)  # each rank's own (torch DDP's ignore list)

    def forward(self, batch) -> StepOutput:
        if batch.prev_x is None:
            raise ConfigError("dlb needs the previous batch on every batch (DataRequest.previous_batch); this loader "
                              "gave none")
        if batch.y_b is not None:
            raise ConfigError("data.mixing: dlb distils the previous batch's own images; set data.mixing=none")
        current = batch.view(0)
        previous = batch.prev_x[1] if batch.prev_x.dim() == 5 else batch.prev_x
        if self.options.form == "released":
            logits = self.model(current)
            previous_logits = self.model(previous)
        else:
            previous_logits, logits = self.model(torch.cat([previous, current])).split(
                [previous.shape[0], current.shape[0]])
        if self.carried_logits.shape != logits.shape:  # the first step: the batch's shape (static afterwards)
            self.carried_logits = torch.zeros(logits.shape, device=logits.device)
            self.has_previous.zero_()
        valid = self.has_previous * batch.prev_valid.to(self.has_previous.dtype)
        ce_both = F.cross_entropy(torch.cat([previous_logits, logits]).float(), torch.cat([batch.prev_y, batch.y]))
        ce_current = F.cross_entropy(logits.float(), batch.y)
        kl = kd_kl(previous_logits, self.carried_logits.clone(), self.options.temperature)
        ce = valid * ce_both + (1 - valid) * ce_current
        loss = ce + valid * self.options.alpha * kl
        self.carried_logits.copy_(logits.detach())
        self.has_previous.fill_(1.0)
        return StepOutput(loss, {"ce": ce.detach(), "kl": (valid * kl).detach()})

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        saved = state_dict.get(prefix + "carried_logits")
        if saved is not None and saved.shape != self.carried_logits.shape:  # sized by the saved run's batch
            self.carried_logits = torch.zeros(saved.shape, dtype=self.carried_logits.dtype,
                                              device=self.carried_logits.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_rank() != 0:
            self.has_previous.zero_()  # the checkpoint holds rank 0's logits, not this rank's batch's

    def predict(self, x):
        return {"net": self.model(x)}

    def export(self, key=None):
        return export_single_network(self.model, key)
