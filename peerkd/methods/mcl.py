"""MCL: Yang, An, Xu, Zhou, Xu, "Mutual Contrastive Learning for Visual Representation Learning", AAAI 2022; the
authors' code winycg/MCL (commit 236da2f54075119a5bdbac272b0b5011b8ddd4a6): ``main_cifar.py``,
``losses/cifar_sup_mcl_loss.py``, ``models/*.py``, ``scripts/train_cifar_mcl*.sh``. Written from the paper and that
code's reading; no code of it is copied here.

N peers, each a classifier with a projection head on its pooled penultimate feature f_i:
e_i = normalize(W2 ReLU(W1 f_i + b1) + b2) (128-d, unit length). On a batch of B images with labels y, the
similarity logits are S_ij = e_i e_j^T / tau (B x B, tau = 0.1). With P the positives (same label, not the same
image) and the row softmax taken over every other image (k != a),

    C(S)      = -1/B sum_a 1/|P_a| sum_{p in P_a} [S_ap - log sum_{k != a} exp(S_ak)]     (supervised contrastive)
    VCL       = sum_i C(S_ii)                                          (vanilla: within a peer)
    ICL       = sum_{i != j} C(S_ij)                                   (interactive: anchors of i, contrasts of j)
    soft VCL  = sum_{i != j} T^2 KL(softmax(S_jj / T) || softmax(S_ii / T))       (S_jj detached)
    soft ICL  = sum_{i != j} T^2 KL(softmax(S_ji / T) || softmax(S_ij / T))       (S_ji = S_ij^T detached)
    L = sum_i CE(z_i, y) + alpha VCL + gamma soft VCL + beta ICL + lam soft ICL [+ logit KD]

with alpha = beta = 0.1, gamma = lam = 1, T = 3 (``scripts/train_cifar_mcl.sh``; ``main_cifar.py`` ``--kd_T 3``,
``--tau 0.1``, ``--feat-dim 128``). The soft KLs are batch means over the B rows (``KLDiv``, ``batchmean``), each
taken over the whole row, the image's similarity to itself included.

Readings chosen, with their evidence (winycg/MCL at the commit above):

- Positives exclude the anchor's own image also across peers: the code's ``intra_mask = eq(y, y^T) - eye`` serves
  VCL and ICL alike and its denominators use ``diag_mask`` (``losses/cifar_sup_mcl_loss.py`` ``SupMCL.forward``), so
  in S_ij the same image seen by peer j is neither a positive nor a negative. The unused ``inter_mask`` is not read.
- Every sample needs another of its class in the batch (else ``|P_a| = 0`` and the code's loss is NaN): the code
  draws batches of 64 classes x 2 images (``MPerClassSampler(m=2)``, ``dataset/class_sampler.py``).
  ``positives: class_pairs`` (the default) asks the loader for class pairs (``DataRequest.class_pairs``): the B
  anchors and their B partners form the 2B-image batch (``data.batch_size: 64`` gives the code's 128 images, each
  class at least twice). CE is over all 2B images, as the code's is over its 128. ``positives: batch`` uses the
  batch as loaded and leaves out of C the anchors with no positive (their mean is over the anchors that have one;
  equal to the code whenever every anchor has one).
- Peer layout: the code's x2 networks are independent (``ResNet_n``, ``WideResNet_n``, ``ShuffleNetV2_n``), its x4
  networks share the stem and the first stage (``ResNet_b``: ``conv1, bn1, layer1`` shared, ``layer2_i, layer3_i,
  classifier_i`` per peer; ``WideResNet_b`` and ``ShuffleNetV2_b`` alike; ``models/resnet.py``, ``wrn.py``,
  ``shufflenetv2.py``: ``number_net == 2`` picks ``_n``, anything else ``_b``). ``shared_stages: 0`` builds
  independent peers (a cohort of any named networks), ``shared_stages: k`` one network whose stem and first k stages
  are shared (``branched(model, split_at=k)``); the x4 configs set 1.
- Logit distillation (``--logit-distill``, ``scripts/train_cifar_mcl_logit.sh``): z_bar = mean_i z_i, detached;
  ``main_cifar.py`` distils ``T^2 KL(softmax(z_bar/T) || softmax(z_i/T))`` (T = 3) into both peers when N = 2 and
  into the last peer alone otherwise. ``logit_distill: reference`` does exactly that, ``all`` into every peer,
  ``off`` (the default: the README's first table) none.
- The projection heads train with the networks (the code adds ``criterion_mcl.embed_list`` to the SGD's parameters,
  weight decay included); normalisation is ``x / ||x||_2`` (``Normalize``), here ``F.normalize`` (the same but for a
  zero vector, where it stays finite).
- No memory: the CIFAR code contrasts within the batch only (the memory-bank variant is the ImageNet code's,
  ``losses/imagenet_sup_mcl_loss.py``), so the method keeps no state between steps.
- ``predict``: ``peer{i}`` and ``ensemble`` (the mean of the peers' logits: the code's test sums them). The README's
  numbers are the best peer at the best epoch (``test`` returns ``max(acc1[:-1])``).

Held against the authors' code (``tests/golden/test_mcl.py``, fixtures by ``tools/golden/mcl.py``): the code's own
ResNet-32 networks (x2 independent; x4 with the shared stem and first stage and ``--logit-distill``), ``Sup_MCL_Loss``
and ``DistillKL``, mapped by name into this method, over two SGD steps of the code's optimiser on 4 anchors + 4
partners: CE, VCL, ICL and the total to 1e-5; the KL terms (soft VCL / ICL, logit KD) to 1e-5 of max(|value|, 1);
every parameter's first-step gradient to 1e-5 of its norm (the heads' biases 5e-5); the second step's losses and the
BatchNorm statistics after it to 1e-5, its gradients to 1e-4 (x2) / 1e-2 (x4: round-off of the first update that
the rule-weighted networks amplify; measured 2.1e-3). The table's other networks (ResNet-56, bottleneck
ResNet-110, WRN-16-2 / 40-2 / 28-4, ShuffleNetV2 1x / 0.5x, HCGNet-A1 / A2) are held by
``tools/golden/mcl_networks.py``; the x4 layouts have the code's ``*_b`` parameter counts
(``tests/configs/test_mcl_configs.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.core.method import DataRequest, Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import hard_ce, kd_kl
from peerkd.methods.parts.branching import build_branched
from peerkd.methods.parts.cohort import (
    build_cohort,
    export_member,
    feature_widths,
    peer_keys,
    run_cohort_features,
)

LogitDistill = Literal["off", "reference", "all"]
Positives = Literal["class_pairs", "batch"]


class ProjectionHead(nn.Module):
    """MCL's embedding head: Linear(D, d), ReLU, Linear(d, d), then unit length (the code's ``Embed``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(inplace=True),
                                  nn.Linear(out_features, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features), dim=1)


def contrastive_losses(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """C(S) of every block of ``similarity`` ``(..., B, B)`` (rows: anchors; module docstring): the supervised
    contrastive loss over the other images, positives of the anchor's label but not its own image; anchors with no
    positive are left out of the mean. Returns ``(...)``."""
    b = similarity.shape[-1]
    self_pair = torch.eye(b, dtype=torch.bool, device=similarity.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_pair
    log_denominator = similarity.masked_fill(self_pair, float("-inf")).logsumexp(dim=-1, keepdim=True)
    log_prob = similarity - log_denominator
    count = positives.sum(dim=1).to(similarity.dtype)
    mean_log_prob_pos = (log_prob * positives).sum(dim=-1) / count.clamp_min(1.0)
    has_positive = (count > 0).to(similarity.dtype)
    return -(mean_log_prob_pos * has_positive).sum(dim=-1) / has_positive.sum().clamp_min(1.0)


def mcl_terms(embeddings: list[torch.Tensor], labels: torch.Tensor, tau: float,
              temperature: float) -> dict[str, torch.Tensor]:
    """VCL, soft VCL, ICL and soft ICL (module docstring) of the peers' unit embeddings ``(B, d)`` each."""
    n = len(embeddings)
    stacked = torch.stack(embeddings)  # (N, B, d)
    similarity = torch.einsum("ibd,jcd->ijbc", stacked, stacked) / tau  # S_ij = e_i e_j^T / tau: (N, N, B, B)
    losses = contrastive_losses(similarity, labels)  # (N, N)
    same = torch.eye(n, dtype=torch.bool, device=losses.device)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    own = similarity.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # S_ii: (N, B, B)
    first, second = [i for i, _ in pairs], [j for _, j in pairs]
    # kd_kl averages over the rows of all pairs: times the number of pairs is the code's sum of batch means
    soft_vcl = kd_kl(own[first], own[second].detach(), temperature) * len(pairs)
    soft_icl = kd_kl(similarity[first, second], similarity[second, first].detach(), temperature) * len(pairs)
    return {"vcl": losses[same].sum(), "soft_vcl": soft_vcl, "icl": losses[~same].sum(), "soft_icl": soft_icl}


@register_method("mcl")
class MCL(Method):
    """Mutual Contrastive Learning (Yang et al. 2022): peers' embeddings contrasted within and across peers."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet32", "resnet32"])  # the N peers (2 or more)
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory
        # stages (after the stem) the peers share: 0 independent networks (the code's x2 networks), k > 0 one
        # network with stem + first k stages shared and the rest per peer (the code's x4 networks: 1)
        shared_stages: int = 0
        embedding_dim: int = 128  # d: the projection heads' width (main_cifar.py --feat-dim 128)
        tau: float = 0.1  # temperature of the similarity logits S = e e^T / tau (--tau 0.1)
        temperature: float = 3.0  # T of the soft VCL / ICL KLs and of the logit KD (--kd_T 3)
        vcl_weight: float = 0.1  # alpha (train_cifar_mcl.sh --alpha 0.1; 0 in the baseline)
        soft_vcl_weight: float = 1.0  # gamma (--gamma 1)
        icl_weight: float = 0.1  # beta (--beta 0.1)
        soft_icl_weight: float = 1.0  # lam (--lam 1)
        # logit KD from the peers' mean logits: off (the README's first table), reference (main_cifar.py
        # --logit-distill: both peers when N = 2, the last peer alone otherwise), all (every peer)
        logit_distill: LogitDistill = "off"
        # where each anchor's positives come from: class_pairs (the loader pairs every image with another of its
        # class: the code's 2-per-class batches) or batch (as loaded; anchors without a positive left out)
        positives: Positives = "class_pairs"

    @classmethod
    def model_requirements(cls, options):
        # pooled penultimate features for the projection heads; a shared trunk splits the stages
        return {"models": ("stages",) if options.shared_stages > 0 else ("features",)}

    @classmethod
    def data_request(cls, options):
        return DataRequest(class_pairs=options.positives == "class_pairs")

    def __init__(self, options, task):
        super().__init__(options, task)
        from peerkd.core.errors import ConfigError

        n = len(options.models)
        if n < 2:
            raise ConfigError("method.models: MCL needs at least two peers")
        if options.shared_stages < 0:
            raise ConfigError(f"method.shared_stages: 0 (independent peers) or more, got {options.shared_stages}")
        if options.tau <= 0 or options.temperature <= 0:
            raise ConfigError("method.tau / method.temperature: must be positive")
        if options.embedding_dim < 1:
            raise ConfigError(f"method.embedding_dim: must be positive, got {options.embedding_dim}")
        if options.shared_stages > 0:
            if len(set(options.models)) > 1:
                raise ConfigError("method.shared_stages: peers sharing stages must be one network; method.models "
                                  f"names {sorted(set(options.models))}")
            self.net = build_branched(options.models[0], task.num_classes, options.shared_stages, n,
                                      options.model_options)
            widths = [self.net.feature_dim] * n
        else:
            self.models = build_cohort(options.models, task.num_classes, options.model_options)
            widths = feature_widths(self.models)
        self.heads = nn.ModuleList(ProjectionHead(w, options.embedding_dim) for w in widths)

    def peer_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every peer's pooled penultimate features and logits on ``x``."""
        if self.options.shared_stages > 0:
            out = self.net.tail_outputs(self.net.trunk(x))
            return list(out.features), list(out.logits)
        pairs = run_cohort_features(self.models, x)
        return [f for f, _ in pairs], [z for _, z in pairs]

    def _cross_entropy(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """CE over the step's images: with class pairs the mean over anchors (the batch's labels, mixed where
        mixed) and partners (their class)."""
        if self.options.positives != "class_pairs":
            return hard_ce(logits, batch)
        b = batch.y.shape[0]
        return 0.5 * (hard_ce(logits[:b], batch) + F.cross_entropy(logits[b:].float(), batch.y))

    def forward(self, batch) -> StepOutput:
        o = self.options
        if o.positives == "class_pairs":
            if batch.pair_x is None:
                raise ValueError("MCL with positives: class_pairs needs the loader's class pairs (Batch.pair_x)")
            images = torch.cat([batch.view(0), batch.pair_x])
            labels = torch.cat([batch.y, batch.y])
        else:
            images, labels = batch.view(0), batch.y
        features, logits = self.peer_outputs(images)
        n = len(logits)
        ce = sum(self._cross_entropy(z, batch) for z in logits)
        embeddings = [head(f.float()) for head, f in zip(self.heads, features)]
        with torch.autocast(images.device.type, enabled=False):  # similarities / tau up to 10: fp32 as the code
            terms = mcl_terms([e.float() for e in embeddings], labels, o.tau, o.temperature)
        loss = ce + o.vcl_weight * terms["vcl"] + o.soft_vcl_weight * terms["soft_vcl"] \
            + o.icl_weight * terms["icl"] + o.soft_icl_weight * terms["soft_icl"]
        logs = {"ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}
        if o.logit_distill != "off":
            mean_logits = torch.stack(logits).mean(dim=0).detach()
            students = logits if o.logit_distill == "all" or n == 2 else logits[-1:]
            logit_kd = sum(kd_kl(z, mean_logits, o.temperature) for z in students)
            loss = loss + logit_kd
            logs["logit_kd"] = logit_kd.detach()
        return StepOutput(loss, logs)

    def predict(self, x):
        _, logits = self.peer_outputs(x)
        out = dict(zip(peer_keys(len(logits)), logits))
        out["ensemble"] = torch.stack(logits).mean(dim=0)  # the code's test ensemble (a sum: the same argmax)
        return out

    def diversity_groups(self):
        return {"peers": peer_keys(len(self.options.models))}

    def export(self, key=None):
        if self.options.shared_stages == 0:
            return export_member(self.models, key)
        key = key or "peer0"
        keys = peer_keys(len(self.options.models))
        if key not in keys:
            raise KeyError(f"cannot export '{key}': exportable keys are {', '.join(keys)}")
        return self.net.export_branch(keys.index(key)).eval()
