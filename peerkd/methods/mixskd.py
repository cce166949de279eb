"""MixSKD: self-knowledge distillation from Mixup. Yang, An, Zhou, Cai, Zhi, Wu, Xu, Zhang, "MixSKD:
Self-Knowledge Distillation from Mixup for Image Recognition", ECCV 2022 (arXiv 2208.05768).

Written from the authors' code, winycg/Self-KD-Lib at ede3062d1193626da2bc8a1ceba535d84fb0a08c: the training loop
``main_mixskd_cifar.py`` (its ``train``, ``mixup_data``, ``mixup_criterion`` and the criterion set-up of its
``__main__``), the network ``models/resnet_mixskd.py`` (``ResNet_Auxiliary``, ``Auxiliary_Classifier``,
``ResNet_Final_Auxiliary_Classifer``), the discriminators ``methods/adversarial.py`` (``discriminatorLoss``) and
``utils.py`` (``DistillKL``). The command is ``scripts/main_cifar.sh``'s last self-KD line (the script's defaults).

The network: a backbone of S stages (4 on the CIFAR ResNets) and, for every shallow stage i < S, an auxiliary branch
made of fresh copies of the stages i+1 .. S and of the head (``Auxiliary_Classifier``: ``block_extractor{i}`` =
the later ``_make_layer`` stages, then average pooling and ``fc{i}``), so every one of the S classifiers ends in a
map F_k of the deepest stage's shape (k = 1..S-1 the branches', k = S the backbone's own last map). The self-teacher
(``ResNet_Final_Auxiliary_Classifer``) is a 1x1 convolution (S*C -> C, no bias) of the S maps concatenated on the
channels, then pooling and a linear classifier. One discriminator per map (``Discriminator``: Linear(C, 128), ReLU,
Linear(128, 2)) on the pooled map.

One step, with B images x and labels y: lam ~ Beta(alpha, alpha), a permutation p of the batch, the mixed images
x~ = lam x + (1 - lam) x[p]; one pass of the 2B images [x, x~] (BatchNorm sees both halves together). For classifier
k, z_k (clean half), z~_k (mixed half), and the "mixture" of the pair's outputs z^m_k = lam z_k + (1 - lam) z_k[p],
F^m_k = lam F_k + (1 - lam) F_k[p]; the self-teacher gives t^m = T(F^m_1..S) and t~ = T(F~_1..S). Then

    L = sum_k CE(z_k, y)                                                                  (loss_cls)
      + KL_T(z^m_S || t~) + KL_T(z~_S || t^m)                                             (loss_div, backbone)
      + sum_{k<S} KL_T(z^m_k || z~_k) + KL_T(z~_k || z^m_k)                               (loss_div, branches)
      + sum_k MSE(F^m_k, F~_k)                                                            (loss_fea)
      + sum_k BCE(D_k(pool([F^m_k; F~_k])), [1, 0] for F^m, [0, 1] for F~)                (loss_gan)

where ``KL_T(a || b) = T^2 KL(softmax(b / T) || softmax(a / T))`` averaged over the batch with the second argument
detached (``DistillKL``: ``kl_div(log_softmax(a/T), softmax(b/T), batchmean) * T**2``, T = ``--kd_T`` 3), MSE is
``F.mse_loss`` (mean over every element, both sides with gradient) and BCE ``BCEWithLogitsLoss`` (mean over the 2B x 2
entries), every weight 1 as the code adds them.

Readings, each the code's, with the switch that changes it:

- ``mixup_ce_weight = 0``: the code computes ``loss_mixcls`` = the Mixup CE ``lam CE(., y) + (1 - lam) CE(., y[p])``
  of every mixed-half classifier z~_k and of both self-teacher outputs, prints it, and leaves it out of
  ``loss = loss_cls + loss_div + loss_fea + loss_gan``. The self-teacher's outputs enter ``loss_div`` only detached,
  so nothing trains the self-teacher: its weights keep their initial values (their gradient is None, which SGD skips,
  weight decay included). peerkd logs the term as ``mixce`` and adds ``mixup_ce_weight`` x it (1 trains the
  self-teacher and adds the mixed-half CE).
- ``train_discriminators = False``: ``discriminatorLoss`` keeps its discriminators in a Python list, not a
  ``ModuleList``, so they are outside ``trainable_list.parameters()`` and the optimizer: fixed random projections
  the network is trained to make separable (the network minimises the BCE; there is no min-max). peerkd holds them as
  frozen parameters (in ``state_dict``, no gradient, not trained); ``True`` trains them on the same BCE.
- the KL pairs: the backbone's two terms go to the self-teacher, each branch's two to its own mixture/mixed pair;
  the backbone's own mixture/mixed pair has no KL term (the code's ``range(len(mix_logits) - 1)``).
- the mixing: lam from ``Beta(0.4, 0.4)`` (``--mixup-alpha``), the permutation uniform, drawn every step
  (``mixup_data``). peerkd draws both inside ``forward`` on the batch's device from torch's global generator
  (``torch.distributions.Beta``, ``torch.randperm``): the loader's mixing (``DataRequest(mixing=...)``,
  ``peerkd.data.mixing``) replaces the batch by the mixed images and keeps neither the clean images nor the
  permutation, both of which every term above needs. The trainer checkpoints the global generators (CPU and CUDA;
  ``training/setup.py`` ``rng_state``), so a resume draws the same numbers; nothing is read back to the host.
  ``data.mixing`` must stay ``none`` (a batch the loader already mixed is refused).
- ``predict``: ``backbone`` (the network the paper reports and ``export`` gives) and ``aux1`` .. ``aux{S-1}``, the
  branches the code's ``test`` also scores (its "best accuracy" is the best of all classifiers over epochs); the
  self-teacher is not evaluated by the code (it needs a pair) and is not a predict key.

Any model of the stem / stages / head contract works (``model_requirements``: "stages"); a branch is a fresh build of
the same model (the model's own initialisation), its stages after the tapped one and its head. The BYOT-style
adapters of ``parts/stage_adapters`` are not used: MixSKD's branches are the remaining stages themselves.

Held against the code in ``tests/golden/test_selfkdlib_mixskd.py`` (network ``resnet18_mixskd``: the MixSKD file's
stem has no ReLU, unlike Self-KD-Lib's plain ``CIFAR_ResNet18``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.method import Method, StepOutput
from peerkd.core.registry import register_method
from peerkd.losses import kd_kl
from peerkd.models import build_model
from peerkd.models.registry import model_label


class SelfTeacher(nn.Module):
    """``ResNet_Final_Auxiliary_Classifer``: 1x1 conv (S*C -> C, no bias) of the concatenated maps, pool, linear."""

    def __init__(self, num_maps: int, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(num_maps * channels, channels, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(torch.cat(maps, dim=1))), 1))


class Discriminator(nn.Module):
    """``methods/adversarial.py`` ``Discriminator``: Linear(C, 128), ReLU, Linear(128, 2) on the pooled map."""

    def __init__(self, channels: int, hidden: int = 128):
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1))


@register_method("mixskd")
class MixSKD(Method):
    """MixSKD (Yang et al. 2022): Mixup pairs distilled into their mixed image, feature maps and logits, with
    auxiliary branches, a self-teacher on the stages' maps and fixed discriminators."""

    @dataclass
    class Options:
        model: str = "resnet18_mixskd"  # backbone; the code's --arch MixSKD_CIFAR_ResNet18 (stem without ReLU)
        model_options: dict = field(default_factory=dict)  # keyword arguments of the backbone's factory
        mixup_alpha: float = 0.4  # lam ~ Beta(alpha, alpha), the code's --mixup-alpha default (0: lam = 0.5)
        temperature: float = 3.0  # T of every KL term (T^2 scaled), the code's --kd_T default
        ce_weight: float = 1.0  # weight of the clean-half CE of all S classifiers (loss_cls), 1 as the code adds it
        kd_weight: float = 1.0  # weight of the logit mixup distillation (loss_div), 1 as the code adds it
        feature_weight: float = 1.0  # weight of the feature-map MSE (loss_fea), 1 as the code adds it
        discriminator_weight: float = 1.0  # weight of the discriminators' BCE (loss_gan), 1 as the code adds it
        mixup_ce_weight: float = 0.0  # weight of the Mixup CE of the mixed half and the self-teacher (loss_mixcls):
        # 0, the code computes it and leaves it out of the loss (see the docstring)
        train_discriminators: bool = False  # False: the code's fixed random discriminators (a Python list, outside
        # its optimizer); True: trained on the same BCE
        discriminator_hidden: int = 128  # hidden units of each discriminator, the code's Linear(dim, 128)

    ddp_find_unused_parameters = True  # the self-teacher gets no gradient with the code's mixup_ce_weight = 0

    @classmethod
    def model_requirements(cls, options):
        return {"model": ("stages",)}  # the map after every stage, and the stages to copy into branches

    def __init__(self, options, task):
        super().__init__(options, task)
        o = options
        if o.mixup_alpha < 0 or o.temperature <= 0:
            raise ConfigError(f"method.mixup_alpha must be >= 0 and method.temperature > 0, got {o.mixup_alpha} and "
                              f"{o.temperature}")
        self.backbone = build_model(o.model, task.num_classes, key="method.model", **o.model_options)
        stages = len(self.backbone.stages)
        if stages < 2:
            raise ConfigError(f"method.model: {model_label(o.model)} has {stages} stage; MixSKD's auxiliary branches "
                              "need 2 or more")
        branches, heads = [], []
        for tapped in range(stages - 1):  # a fresh build per branch: the model's own initialisation
            fresh = build_model(o.model, task.num_classes, key="method.model", **o.model_options)
            branches.append(nn.Sequential(*list(fresh.stages)[tapped + 1:]))
            heads.append(fresh.head)
        self.branches = nn.ModuleList(branches)  # block_extractor1..S-1 (registered before the heads, as the code)
        self.branch_heads = nn.ModuleList(heads)  # fc1..S-1 (with the model's pooling)
        channels, size = self._last_map_shape(task)
        self.self_teacher = SelfTeacher(stages, channels, task.num_classes)
        self.discriminators = nn.ModuleList(Discriminator(channels, o.discriminator_hidden) for _ in range(stages))
        if not o.train_discriminators:
            self.discriminators.requires_grad_(False)
        self.num_classifiers = stages

    @torch.no_grad()
    def _last_map_shape(self, task) -> tuple[int, int]:
        was = self.backbone.training
        self.backbone.eval()
        last = self.backbone.forward_stages(torch.zeros(1, task.in_channels, task.image_size, task.image_size))[-1]
        self.backbone.train(was)
        return last.shape[1], last.shape[-1]

    # -- the pieces -------------------------------------------------------------------------------------------
    def classifier_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits and last-stage maps of the S classifiers (branches 1..S-1, then the backbone)."""
        maps = self.backbone.forward_stages(x)
        finals = [branch(m) for branch, m in zip(self.branches, maps)] + [maps[-1]]
        logits = [head(f) for head, f in zip(self.branch_heads, finals)] + [self.backbone.head(maps[-1])]
        return logits, finals

    def draw_mixing(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """lam ~ Beta(alpha, alpha) (0.5 when alpha is 0, as ``mixup_data``) and a uniform permutation, on
        ``device`` from torch's global generator (no host read)."""
        if self.options.mixup_alpha > 0:
            alpha = torch.full((), float(self.options.mixup_alpha), device=device)
            lam = torch.distributions.Beta(alpha, alpha, validate_args=False).sample()  # no validation: no sync
        else:
            lam = torch.full((), 0.5, device=device)
        return lam, torch.randperm(batch_size, device=device)

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
                   partner: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of the step for images ``x``, labels ``y``, weight ``lam`` and permutation ``partner``."""
        o, n = self.options, x.shape[0]
        lam = lam.to(x.dtype)
        mixed = lam * x + (1 - lam) * x.index_select(0, partner)
        logits, finals = self.classifier_outputs(torch.cat([x, mixed]))
        lam_f = lam.float()

        def mixture(t: torch.Tensor) -> torch.Tensor:  # lam t + (1 - lam) t[p] over the clean half
            return lam * t[:n] + (1 - lam) * t[:n].index_select(0, partner)

        mixed_maps = [f[n:] for f in finals]
        mixture_maps = [mixture(f) for f in finals]
        teacher_of_mixture = self.self_teacher(mixture_maps)
        teacher_of_mixed = self.self_teacher(mixed_maps)
        mixture_logits = [mixture(z) for z in logits]
        mixed_logits = [z[n:] for z in logits]
        t = o.temperature
        ce = sum(F.cross_entropy(z[:n].float(), y) for z in logits)
        kd = kd_kl(mixture_logits[-1], teacher_of_mixed.detach(), t) + \
            kd_kl(mixed_logits[-1], teacher_of_mixture.detach(), t)
        for a, b in zip(mixture_logits[:-1], mixed_logits[:-1]):
            kd = kd + kd_kl(a, b.detach(), t) + kd_kl(b, a.detach(), t)
        feature = sum(F.mse_loss(a.float(), b.float()) for a, b in zip(mixture_maps, mixed_maps))
        target = torch.cat([torch.tensor([1.0, 0.0], device=x.device).expand(n, 2),
                            torch.tensor([0.0, 1.0], device=x.device).expand(n, 2)])
        gan = sum(F.binary_cross_entropy_with_logits(d(torch.cat([a, b])).float(), target)
                  for d, a, b in zip(self.discriminators, mixture_maps, mixed_maps))
        y_b = y.index_select(0, partner)
        mixce = sum(lam_f * F.cross_entropy(z.float(), y) + (1 - lam_f) * F.cross_entropy(z.float(), y_b)
                    for z in [*mixed_logits, teacher_of_mixture, teacher_of_mixed])  # mixup_criterion
        weighted = [(o.ce_weight, ce), (o.kd_weight, kd), (o.feature_weight, feature),
                    (o.discriminator_weight, gan), (o.mixup_ce_weight, mixce)]
        # a term of weight 0 stays out of the graph: its parameters get no gradient (None), which SGD skips,
        # weight decay and momentum included, as the code's self-teacher (a 0 x term would decay them)
        loss = sum(w * term for w, term in weighted if w != 0)
        return {"loss": loss, "ce": ce, "kd": kd, "feature": feature, "gan": gan, "mixce": mixce,
                "logits": logits, "teacher_of_mixture": teacher_of_mixture, "teacher_of_mixed": teacher_of_mixed}

    # -- the contract -----------------------------------------------------------------------------------------
    def forward(self, batch) -> StepOutput:
        if batch.y_b is not None:
            raise ConfigError("method mixskd mixes its own pairs (it needs the clean images and the permutation): "
                              "set data.mixing to none")
        x = batch.view(0)
        lam, partner = self.draw_mixing(x.shape[0], x.device)
        terms = self.loss_terms(x, batch.y, lam, partner)
        logs = {k: terms[k].detach() for k in ("ce", "kd", "feature", "gan", "mixce")}
        logs["lam"] = lam.detach().float()
        return StepOutput(terms["loss"], logs)

    def predict(self, x):
        logits, _ = self.classifier_outputs(x)
        out = {"backbone": logits[-1]}
        out.update({f"aux{i + 1}": z for i, z in enumerate(logits[:-1])})
        return out

    def export(self, key=None):
        if key not in (None, "backbone"):
            raise KeyError(f"cannot export '{key}': only 'backbone' is a plain network (an auxiliary branch needs the "
                           "backbone's early stages)")
        return copy.deepcopy(self.backbone).eval()
