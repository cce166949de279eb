"""BAKE: batch knowledge ensembling. Ge, Zhang, Wang, Li, "Self-distillation with Batch Knowledge Ensembling Improves
ImageNet Classification", arXiv 2104.13298, 2021 — as winycg/Self-KD-Lib runs it (``methods/bake.py``, ``main.py``,
``dataloader/dataloaders.py``).

One network. Each batch holds B sampled images and, for each, M = ``intra_images`` other images of its class (the
loader's class pairs, ``DataRequest(class_pairs=M)``), N = (M + 1) B images in all. From the network's own pooled
features f_i (L2-normalised) and logits z_i, without gradient, every image gets a soft target propagated from the
other images of the batch in proportion to their feature affinity:

    A = softmax_rows(F F^T - 1e9 I)                   (the affinity to the other images; none to itself)
    P = softmax(Z / T)                                (the batch's softened predictions, N x K)
    Q = (1 - omega) (I - omega A)^-1 P                (the infinite propagation sum_t (omega A)^t P, normalised)
    L = CE(z_i, y_i) + kd_weight * T^2 * KL(target(Q_i) || softmax(z_i / T)),  averaged over the N images

with T = 4, omega = 0.5, kd_weight = 1, M = 3 (Self-KD-Lib ``main.py``: ``--T 4``, ``--omega 0.5``,
``--intra-imgs 3``; the loss is ``loss_cls + loss_div``, unweighted).

Readings, each from Self-KD-Lib:

- The target. ``knowledge_ensemble`` returns the propagated probabilities Q, and ``BAKE`` hands them to
  ``DistillKL(T)`` (``utils.py``) as its *teacher logits*, which softens them again: the code's target is
  ``softmax(Q_i / T)`` (``target: resoftened``, the default, which gives the README's 76.93 %), an almost uniform
  distribution. The paper's target is Q itself (``target: ensemble``; a deviation from the code that gave the
  README's number).
- The features: the pooled penultimate vector (``CIFAR_ResNet.forward(..., embedding=True)`` returns ``embedding0``,
  the average-pooled last stage), here ``head.features``; the model needs the "features" capability.
- The batch: Self-KD-Lib's ``IdentityBatchSampler`` yields ``batch_size`` shuffled images and then ``intra_imgs``
  others of each one's class (``np.random.choice`` without replacement when the class has enough), so a step sees
  (M + 1) x ``batch_size`` images (512 for the README's 128); CE and KL average over all of them, in training mode
  (BN statistics over all). peerkd's loader gives the same batch from ``data.batch_size`` = B (the partners drawn
  from ``(seed, epoch)``, Floyd's k-subset sampling, ``peerkd.data.device_loader``). The ensemble is equivariant to
  the order of the images, so the order (the reference's partners follow their anchor; peerkd's are block-major)
  does not change any target. One difference stays in the sampler: the reference walks a shuffled list of anchors
  whose last, shorter batch it keeps (50,000 = 390 x 128 + 80); peerkd drops the partial batch like every method.
- The target is computed under ``torch.no_grad`` from detached features and logits of the same forward (one pass).
- Under DDP each process ensembles its own share of the batch (its anchors with their partners); the reference's
  ``DataParallel`` gathers the logits and ensembles the whole batch on one device (same on one GPU).
- A mixed batch (``data.mixing``): the anchors' CE uses the mixed labels (``hard_ce``), the partners stay unmixed;
  the reference has no mixing.

Held against Self-KD-Lib's code (``tests/golden/test_selfkdlib_bake.py``, one step of 2 anchors + 3 partners each
on its ``CIFAR_ResNet18`` = ``preact_resnet18``, ``tests/golden/test_selfkdlib_networks.py``): logits and features
exact, targets 9e-8, KL 2e-7, loss 1e-7 (of the largest |value|), every parameter's gradient 4e-6 of its norm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl, kd_kl_probs
from peerkd.methods.parts.cohort import build_cohort, export_member

SELF_AFFINITY = 1e9  # subtracted from the diagonal before the row softmax: an image propagates nothing to itself


def batch_knowledge_ensemble(features: torch.Tensor, logits: torch.Tensor, omega: float,
                             temperature: float) -> torch.Tensor:
    """``(1 - omega) (I - omega A)^-1 softmax(Z / T)`` with ``A`` the row softmax of the cosine affinities of
    ``features`` (N, D) to the other images: each row a distribution over the classes. No gradient."""
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):  # fp32 under mixed precision
        features, logits = features.detach().float(), logits.detach().float()
        eye = torch.eye(features.shape[0], device=features.device, dtype=features.dtype)
        unit = F.normalize(features, p=2, dim=1)
        affinity = torch.softmax(unit @ unit.t() - eye * SELF_AFFINITY, dim=1)
        # I - omega A is strictly diagonally dominant (A row-stochastic, omega < 1), so always invertible: inv_ex
        # skips linalg.inv's singularity check, a device-to-host synchronisation on CUDA
        propagation = (1 - omega) * torch.linalg.inv_ex(eye - omega * affinity).inverse
        return propagation @ torch.softmax(logits / temperature, dim=1)


@register_method("bake")
class BAKE(Method):
    """Batch knowledge ensembling (Ge et al. 2021): distil the affinity-propagated predictions of the batch."""

    @dataclass
    class Options:
        model: str = "preact_resnet18"  # the one network trained (Self-KD-Lib's CIFAR_ResNet18)
        model_options: dict = field(default_factory=dict)  # keyword arguments for its factory
        temperature: float = 4.0  # T: Self-KD-Lib main.py --T (both softmaxes and the T^2 factor)
        omega: float = 0.5  # propagation weight in [0, 1): Self-KD-Lib main.py --omega
        kd_weight: float = 1.0  # weight of the KL term: main.py adds loss_div unweighted
        intra_images: int = 3  # M: other images of each sampled image's class in the batch (main.py --intra-imgs)
        target: Literal["resoftened", "ensemble"] = "resoftened"  # resoftened: softmax(Q / T) as Self-KD-Lib's
        # DistillKL makes of the ensemble it is given (the README's number); ensemble: Q itself, the paper's target

    def __init__(self, options, task):
        super().__init__(options, task)
        if not 0 <= options.omega < 1:
            raise ConfigError(f"method.omega={options.omega}: BAKE's propagation weight must be in [0, 1)")
        if options.intra_images < 0:
            raise ConfigError(f"method.intra_images={options.intra_images}: a count of images, 0 or more")
        self.models = build_cohort([options.model], task.num_classes, options.model_options)

    @classmethod
    def data_request(cls, options):
        return DataRequest(class_pairs=options.intra_images)

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("features",)}

    def forward(self, batch) -> StepOutput:
        model, anchors = self.models[0], batch.view(0)
        size = anchors.shape[0]
        x = anchors if batch.pair_x is None else torch.cat([anchors, batch.pair_x])
        features, logits = model.features_and_logits(x)
        ce = hard_ce(logits[:size], batch)
        if x.shape[0] > size:  # the partners share their anchor's label: block j of B rows is every j-th partner
            partner_labels = batch.y.repeat((x.shape[0] - size) // size)
            ce = (ce * size + F.cross_entropy(logits[size:].float(), partner_labels, reduction="sum")) / x.shape[0]
        opts = self.options
        ensemble = batch_knowledge_ensemble(features, logits, opts.omega, opts.temperature)
        if opts.target == "resoftened":
            kd = kd_kl(logits, ensemble, opts.temperature)
        else:
            kd = kd_kl_probs(logits, ensemble, opts.temperature)
        return StepOutput(ce + opts.kd_weight * kd, {"ce": ce.detach(), "kd": kd.detach()})

    def predict(self, x):
        return {"net": self.models[0](x)}

    def export(self, key=None):
        if key in (None, "net"):
            return export_member(self.models, "peer0")
        raise KeyError(f"cannot export '{key}': BAKE exports 'net'")
