"""Pieces shared by the self-distillation methods (BYOT, PS-KD and their combination with mutual feature learning).

- :class:`StageClassifierNet`: one backbone cut after each stage, with a classifier after each shallow stage
  (BYOT's "bottleneck" adapter of :mod:`peerkd.methods.parts.stage_adapters`, bringing the stage's map to the deepest
  map's shape, then pooling + FC); the deepest classifier is the backbone's own head, so the deployed network is
  the plain registered model.
- :class:`PredictionMemory`: PS-KD's per-sample memory of the last prediction for every training image, stored
  compactly (fp32 / fp16 / bf16, optionally only the top-k classes), all-gathered across DDP ranks on write.
- Loss helpers: :func:`progressive_alpha`, :func:`label_distribution`, :func:`self_kd_terms` (BYOT's loss in the
  form of the paper, of its authors' release or of luanyunteng's CIFAR code), :func:`dmfl_loss`.
"""
from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.losses import kd_kl, mean_probs_logits, soft_ce
from peerkd.methods.parts.stage_adapters import AdapterDesign, make_adapters
from peerkd.models import build_model
from peerkd.models.registry import model_label

MemoryDtype = Literal["float32", "float16", "bfloat16"]  # PS-KD memory storage (an Options field's choices)
MEMORY_DTYPES = dict(zip(get_args(MemoryDtype), (torch.float32, torch.float16, torch.bfloat16)))
HintReduction = Literal["sum", "mean"]  # the hint over the batch: BYOT's code sums, a batch mean is 1 / batch size of
# that
ByotRecipe = Literal["release", "luanyunteng", "paper"]  # whose BYOT loss form (an Options choice): the authors'
# release, luanyunteng's CIFAR code, or the paper's equation as written (self_kd_terms)


# ------------------------------------------------------------------------------------------------ architecture

class StageClassifierNet(nn.Module):
    """A registered backbone with a classifier after every stage (Zhang et al. 2019, "Be Your Own Teacher").

    ``forward(x)`` returns ``(logits, features)``, both ordered shallowest to deepest: ``logits[i]`` is classifier
    ``i + 1``'s output, ``features[i]`` its pooled feature vector (after the adapter for the shallow ones, the
    backbone's pooled last map for the deepest: all of the deepest's width). ``shallow_heads=False`` builds the
    adapters but no shallow FC layers (feature-only taps for DMFL without BYOT); ``logits`` then holds only the
    deepest classifier. ``adapters=False`` builds neither: the plain backbone. ``adapter`` names the adapter design
    (:mod:`peerkd.methods.parts.stage_adapters`: ``bottleneck``, the BYOT code's, by default).
    """

    def __init__(self, model: str, num_classes: int, model_options: dict, image_size: int, adapters: bool = True,
                 shallow_heads: bool = True, adapter: AdapterDesign = "bottleneck"):
        super().__init__()
        self.backbone = build_model(model, num_classes, key="method.model", **model_options)
        stages = len(self.backbone.stages)
        if adapters and stages < 2:
            raise ConfigError(f"method.model: {model_label(model)} has {stages} stage; self-distillation needs 2 "
                              "or more")
        self.num_classifiers = stages
        self.adapters = nn.ModuleList()
        self.heads = nn.ModuleList()
        if adapters:
            shapes = self._stage_shapes(image_size)
            out_ch = shapes[-1][0]
            for module in make_adapters(adapter, shapes):
                self.adapters.append(module)
                if shallow_heads:
                    self.heads.append(nn.Linear(out_ch, num_classes))  # on the pooled adapter output

    @torch.no_grad()
    def _stage_shapes(self, image_size: int) -> list[tuple[int, int]]:
        """(channels, size) after every stage, from one dry run in eval mode (BN statistics untouched)."""
        was_training = self.backbone.training
        self.backbone.eval()
        maps = self.backbone.forward_stages(torch.zeros(1, 3, image_size, image_size))
        self.backbone.train(was_training)
        return [(m.shape[1], m.shape[-1]) for m in maps]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        maps = self.backbone.forward_stages(x)
        head = self.backbone.head
        features = [head.features(adapter(m)) for adapter, m in zip(self.adapters, maps)]
        features.append(head.features(maps[-1]))
        logits = [shallow(f) for shallow, f in zip(self.heads, features)] if len(self.heads) else []
        logits.append(head.fc(features[-1]))
        return logits, features

    def classifier_keys(self) -> list[str]:
        """``classifier1`` (shallowest) .. ``classifier{N}`` (deepest, the backbone's own head)."""
        n = self.num_classifiers
        return [f"classifier{i}" for i in range(1, n + 1)] if len(self.heads) else [f"classifier{n}"]

    def predictions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every classifier and, with two or more, ``ensemble``: the mean of their probabilities."""
        logits, _ = self(x)
        out = dict(zip(self.classifier_keys(), logits))
        if len(logits) > 1:
            out["ensemble"] = mean_probs_logits(logits)
        return out

    def export(self, key: str | None) -> nn.Module:
        deepest = self.classifier_keys()[-1]
        if key not in (None, deepest):
            raise KeyError(f"cannot export '{key}': only the deepest classifier '{deepest}' is a plain network "
                           "(the shallow classifiers need the backbone's early stages and their adapters)")
        return copy.deepcopy(self.backbone).eval()


# ----------------------------------------------------------------------------------------------- PS-KD memory

def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every DDP rank (every rank holds the same shape: the loader splits batches evenly)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class PredictionMemory(nn.Module):
    """The last predicted distribution for every training image, indexed by ``Batch.index``.

    Storage (all buffers, so checkpoints carry the memory and a resume continues with it):

    - ``topk = 0``: ``probs`` ``(num_items, num_classes)`` in ``dtype`` (fp32: 4 bytes per entry; fp16 / bf16: 2).
    - ``topk = k``: ``values`` ``(num_items, k)`` in ``dtype`` and ``classes`` ``(num_items, k)`` int16 (int32 past
      32767 classes); the mass outside the top k is spread evenly over the other classes on reading.
      ImageNet (1.28 M x 1000): dense fp32 needs 5.1 GB, dense fp16 2.6 GB, top-10 fp16 + int16 51 MB.
    - ``written`` ``(num_items,)`` bool: images never written read as their one-hot label (PS-KD's first epoch).

    ``write`` all-gathers indices and (compressed) predictions across ranks when ``torch.distributed`` is
    initialised, so every rank holds the whole memory; the owning method sets ``ddp_broadcast_buffers = False``.
    """

    def __init__(self, num_items: int, num_classes: int, dtype: MemoryDtype = "float32", topk: int = 0):
        super().__init__()
        if num_items <= 0:
            raise ConfigError("PS-KD needs the training-set size (TaskInfo.num_train) for its per-sample memory")
        if topk < 0:
            raise ConfigError(f"method.memory_topk: must be 0 (dense) or positive, got {topk}")
        self.num_classes = num_classes
        self.topk = topk if 0 < topk < num_classes else 0
        store = MEMORY_DTYPES[dtype]
        if self.topk:
            index_dtype = torch.int16 if num_classes <= 32767 else torch.int32
            self.register_buffer("values", torch.zeros(num_items, self.topk, dtype=store))
            self.register_buffer("classes", torch.zeros(num_items, self.topk, dtype=index_dtype))
        else:
            self.register_buffer("probs", torch.zeros(num_items, num_classes, dtype=store))
        self.register_buffer("written", torch.zeros(num_items, dtype=torch.bool))

    @torch.no_grad()
    def read(self, index: torch.Tensor, label_probs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float32: the stored distributions of ``index``; ``label_probs`` where nothing was written."""
        if self.topk:
            values = self.values[index].float()
            residual = (1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0) / (self.num_classes - self.topk)
            stored = residual.expand(-1, self.num_classes).clone()
            stored.scatter_(1, self.classes[index].long(), values)
        else:
            stored = self.probs[index].float()
        return torch.where(self.written[index, None], stored, label_probs.float())

    @torch.no_grad()
    def write(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Store ``probs`` ``(B, K)`` for ``index`` ``(B,)`` (on every rank, gathered from every rank)."""
        probs = probs.detach().float()
        gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.topk:
            top = probs.topk(self.topk, dim=-1)
            values, classes = top.values.to(self.values.dtype), top.indices.to(self.classes.dtype)
            if gather:
                index, values, classes = _all_gather(index), _all_gather(values), _all_gather(classes)
            self.values[index] = values
            self.classes[index] = classes
        else:
            stored = probs.to(self.probs.dtype)
            if gather:
                index, stored = _all_gather(index), _all_gather(stored)
            self.probs[index] = stored
        self.written[index] = True


# ------------------------------------------------------------------------------------------------------ losses

def progressive_alpha(epoch: int, epochs: int, alpha_final: float) -> float:
    """PS-KD's weight of the past prediction in epoch ``epoch`` (0-based) of ``epochs``: ``alpha_T * t / T`` with
    ``t = epoch + 1`` the 1-based epoch (Kim et al. 2021, eq. 7), so it reaches ``alpha_T`` in the last epoch."""
    return alpha_final * (epoch + 1) / epochs


def label_distribution(batch, num_classes: int) -> torch.Tensor:
    """``(B, K)`` the batch's one-hot labels (the mixture ``lam y + (1 - lam) y_b`` for a mixed batch)."""
    one_hot = F.one_hot(batch.y, num_classes).float()
    if batch.y_b is None:
        return one_hot
    lam = batch.lam.float().reshape(-1, 1) if batch.lam.dim() else batch.lam.float()
    return lam * one_hot + (1 - lam) * F.one_hot(batch.y_b, num_classes).float()


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: HintReduction = "mean") -> torch.Tensor:
    """``||F_i - F_N||_2^2``: squared Euclidean distance of the pooled feature vectors, summed over the channels and
    then summed (``reduction="sum"``, the BYOT code's ``feature_loss_function``) or averaged over the batch."""
    per_image = (student.float() - teacher.float()).pow(2).sum(-1)
    return per_image.sum() if reduction == "sum" else per_image.mean()


def hint_blocks(recipe: ByotRecipe, num_classifiers: int, distil_blocks: list[int]) -> list[int]:
    """The 1-based shallow classifiers that carry the feature hint: ``distil_blocks`` (all shallow ones when empty),
    less classifier ``N - 1`` under the release's recipe (its ``train.py``: ``if index != 1``, where index 1 is the
    output after the third of four stages; its comment calls it the shallowest, the code skips the deepest shallow
    one)."""
    n = num_classifiers
    blocks = sorted(set(distil_blocks) if distil_blocks else set(range(1, n)))
    return [i for i in blocks if not (recipe == "release" and i == n - 1)]


def _distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  recipe: ByotRecipe) -> torch.Tensor:
    """The logit term of shallow classifier ``i``: ``T^2 KL(P_N^T || P_i^T)`` (paper); the cross-entropy to the
    teacher's softened distribution, ``T^2 CE(P_N^T, P_i^T)`` (luanyunteng ``kd_loss_function`` x ``T**2``) or
    ``CE(P_N^T, P_i^T)`` without ``T^2`` (the release's ``CrossEntropy``). The CE and the KL differ by the teacher's
    entropy, a constant: same gradient, another loss value; the release's lack of ``T^2`` makes its gradient
    ``1 / T^2`` (1/9 at T = 3) of the others' at the same ``a``."""
    if recipe == "paper":
        return kd_kl(student, teacher, temperature)
    t = temperature
    soft = soft_ce(student.float() / t, F.softmax(teacher.float() / t, dim=-1))
    return soft * (t * t) if recipe == "luanyunteng" else soft


def _hint(student: torch.Tensor, teacher: torch.Tensor, recipe: ByotRecipe, reduction: HintReduction,
          adaptation: nn.Module | None) -> torch.Tensor:
    """The feature hint of one shallow classifier (pooled features ``(B, C)``, the teacher's detached):
    ``||F_i - F_N||^2`` over channels, summed or averaged over the batch (paper, ``reduction``); the same squared
    difference summed over batch and channels where either side is positive (luanyunteng ``feature_loss_function``;
    the mask drops nothing from post-ReLU features); ``||W_i F_i + b_i - F_N||_2``, the unsquared Euclidean norm
    over the whole batch through a Linear adaptation layer (the release's ``torch.dist`` of
    ``net.adaptation_layers``)."""
    if recipe == "paper":
        return hint_loss(student, teacher, reduction)
    if recipe == "luanyunteng":
        s, t = student.float(), teacher.float()
        return ((s - t).pow(2) * ((s > 0) | (t > 0))).sum()
    return torch.dist(adaptation(student).float(), teacher.float())


def self_kd_terms(logits: list[torch.Tensor], features: list[torch.Tensor], target: torch.Tensor, *,
                  kl_weight: float, hint_weight: float, temperature: float, distil_blocks: list[int],
                  include_deepest: bool, deepest_ce_weight: float | None = None,
                  hint_reduction: HintReduction = "mean", recipe: ByotRecipe = "paper",
                  hint_adapters: nn.ModuleDict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BYOT's loss over the classifiers (1-based ``i``, ``N`` the deepest; the deepest's outputs detached), in the
    form of ``recipe`` (``a`` = ``kl_weight``, ``lambda`` = ``hint_weight``, ``T`` = ``temperature``):

    - ``"paper"`` (the equation as written): ``sum_i (1 - a) CE(P_i, target) + a T^2 KL(P_N^T || P_i^T)
      + lambda ||F_i - F_N||^2``; the deepest's ``(1 - a) CE`` only with ``include_deepest``, weighted
      ``deepest_ce_weight`` instead of ``1 - a`` when that is given; the hint summed or averaged over the batch
      (``hint_reduction``).
    - ``"luanyunteng"`` (luanyunteng/pytorch-be-your-own-teacher ``train.py``): ``(1 - a) sum_{i<=N} CE(P_i, y)
      + a T^2 sum_{i<N} CE(P_N^T, P_i^T) + lambda sum_{i<N} sum_{b,c} [F_i > 0 or F_N > 0] (F_i - F_N)^2``.
    - ``"release"`` (ArchipLab-LinfengZhang/pytorch-self-distillation-final ``train.py``): ``CE(P_N, y)
      + sum_{i<N} [(1 - a) CE(P_i, y) + a CE(P_N^T, P_i^T)] + lambda sum_{i<N-1} ||A_i(F_i) - F_N||_2`` with
      ``A_i`` = ``hint_adapters[str(i)]`` (Linear, C -> C) and the norm over the whole batch, unsquared.

    The logit and hint terms only for ``i`` in ``distil_blocks`` (all shallow ones when empty; the release's hint
    also skips ``N - 1``, :func:`hint_blocks`). Under ``"luanyunteng"`` and ``"release"`` the deepest CE is always
    there, weighted by the recipe; ``include_deepest``, ``deepest_ce_weight``, ``hint_reduction`` are the paper's.
    """
    n = len(logits)
    blocks = set(distil_blocks) if distil_blocks else set(range(1, n))
    hinted = set(hint_blocks(recipe, n, distil_blocks))
    teacher_logits, teacher_feature = logits[-1].detach(), features[-1].detach()
    total = logits[-1].new_zeros((), dtype=torch.float32)
    logs = {}
    for i in range(1, n + 1):
        z = logits[i - 1]
        if i == n:
            if include_deepest or recipe != "paper":
                ce = soft_ce(z, target)
                weight = {"release": 1.0, "luanyunteng": 1 - kl_weight}.get(
                    recipe, (1 - kl_weight) if deepest_ce_weight is None else deepest_ce_weight)
                total = total + weight * ce
                logs[f"ce{i}"] = ce.detach()
            continue
        ce = soft_ce(z, target)
        part = (1 - kl_weight) * ce
        logs[f"ce{i}"] = ce.detach()
        if i in blocks:
            kl = _distillation(z, teacher_logits, temperature, recipe)
            part = part + kl_weight * kl
            logs[f"kl{i}"] = kl.detach()
        if i in hinted:
            adaptation = hint_adapters[str(i)] if recipe == "release" else None
            hint = _hint(features[i - 1], teacher_feature, recipe, hint_reduction, adaptation)
            part = part + hint_weight * hint
            logs[f"hint{i}"] = hint.detach()
        total = total + part
    return total, logs


def feature_log_distribution(feature: torch.Tensor, temperature: float) -> torch.Tensor:
    """DMFL's feature-to-distribution mapping: ``log softmax(f / tau)`` over the channels of the pooled feature
    vector ``f`` ``(B, C)`` (the vector that feeds the classifier)."""
    return F.log_softmax(feature.float() / temperature, dim=-1)


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor, detach_targets: bool) -> torch.Tensor:
    """``KL(p || q) + KL(q || p)``, batch mean. With ``detach_targets`` each direction trains only its second
    argument (DML's reading: ``KL(p || q)`` is q's loss with p a fixed target), so both sides still learn."""
    p_target = log_p.detach() if detach_targets else log_p
    q_target = log_q.detach() if detach_targets else log_q
    forward = (p_target.exp() * (p_target - log_q)).sum(-1)
    backward = (q_target.exp() * (q_target - log_p)).sum(-1)
    return (forward + backward).mean()


def dmfl_loss(features: list[torch.Tensor], temperature: float, detach_targets: bool) -> torch.Tensor:
    """Eq. 3 of Chottananurak et al.: ``1/(N-1) sum_{i<N} [KL(F_i || F_N) + KL(F_N || F_i)]`` over the feature
    distributions of :func:`feature_log_distribution`."""
    log_deep = feature_log_distribution(features[-1], temperature)
    parts = [symmetric_kl(feature_log_distribution(f, temperature), log_deep, detach_targets) for f in features[:-1]]
    return torch.stack(parts).mean()
