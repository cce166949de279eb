"""MDE: Li, Huang, Chen, Luo, Cai, Pan, "Online Knowledge Distillation via Multi-branch Diversity Enhancement"
(ACCV 2020; paper 001 of this project).

One network with m = 4 branches, m - 1 auxiliary branches and a group leader (two-level distillation as OKDDip):

    L = sum_{i=1}^{m} CE(z_i, y) + alpha T^2 sum_{i<m} KL(t_e || q_i) + beta T^2 KL(t_avg || q_leader)
        + gamma L_cd                                                                            (eq. 8)
    t_e  = sum_{i<m} f_i(s_1 .. s_{m-1}) z_i,  sum_i f_i = 1                                    (eq. 4, FFM)
    L_cd = sum_{i<j} |W_i^T W_j|                                                                (eq. 5)

``f`` is the Feature Fusion Module: the auxiliary branches' last-stage maps ``s_i`` concatenated, a conv-BN-ReLU
block, global pooling, an FC layer and a softmax over the auxiliary branches. alpha = 1, beta = 2, gamma = 5e-8,
T = 3. The group leader is exported for deployment.

Readings where the paper is silent (it says it follows OKDDip's settings; its alternatives are switches):

- gradient through ``t_e``: none is stopped, as in OKDDip's code (the FFM learns through the KL; the branches also
  receive gradient through the target) -- ``target_gradient: weights`` detaches the logits inside ``t_e``;
- ``t_avg``: the mean of the auxiliary branches' logits (OKDDip's code; "average the predictions of all branches"
  read as all *auxiliary* branches, since the leader cannot be its own teacher);
- L_cd sums over all m classifiers, the leader's included, as eq. 5's indices run to m (``cd_include_leader``),
  and over the pairs (eq. 5's double sum, no mean); biases do not enter;
- ``W_i^T W_j`` (``cd_product``): ``W_i`` is classifier i's weights as one row vector ``vec(W_i)``, so the product
  is the outer product and ``|W_i^T W_j| = ||W_i||_1 ||W_j||_1`` (``outer``, the default). It is the one reading
  under which the paper's gamma behaves as Fig. 3 and Table 6 say: at initialisation (ResNet-32, CIFAR-100, a
  batch of 128) the gradient of gamma L_cd on the classifiers is ~ 4e-3 of CE's at gamma = 5e-8 (~ 1.7 x weight
  decay's: it acts; Table 6 calls CD "the most important" part), ~ 7 x CE's at gamma = 1e-4 (Fig. 3's "too large
  ... will not converge") and ~ 1e-5 at 1e-10 ("too small ... ineffective"). Reading ``nn.Linear``'s ``(C, d)``
  weights literally (``feature``, ``d x d``; or ``class``, ``W_i W_j^T``, ``C x C``) makes L_cd ~ 1e3: gamma L_cd
  ~ 5e-5 and a gradient ~ 500 x below weight decay, inert over the whole Fig. 3 range (kept as switches; see
  :func:`peerkd.methods.parts.multibranch.classifier_diversification`, measured in ``tests/methods/test_mde.py``);
- "we separate the last two blocks": read as OKDDip's code does for its ResNets -- every branch owns the last stage
  and the classifier (``split_at`` unset = all stages but the last shared); set ``split_at`` to branch earlier;
- the KL terms ramp up over 80 epochs as in OKDDip's code (``rampup_epochs``); the CD term is not ramped;
- the FFM's centre block (sizes not given): one 1x1 conv from the concatenated maps to a sixteenth of one branch's
  channels, BN, ReLU (``fusion_kernel: 1``, ``fusion_reduction: 16``, ``fusion_blocks: 1``): the reading under which
  FFM is lighter than OKDDip's attention, as sec. 2 claims, and costs a few percent of the backbone ("without
  additional training costs"); ``fusion_kernel: 3, fusion_reduction: 1`` is the earlier 3x3 conv keeping the
  channels (113 M parameters on Xception and ResNeXt-50). Details: ``FusionTarget`` in methods/multibranch.py.

Table 6's Gate and SA rows are ONE and OKDDip themselves (its Gate row equals ONE's Table 2 number, 25.76, its SA row
OKDDip's, 25.45), so ``configs/mde/table6`` runs ``one`` / ``okddip`` for them (each with ``cd_weight`` for "+ CD",
the same :func:`~peerkd.methods.parts.multibranch.classifier_diversification`) and ``mde`` for the FFM rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from peerkd.methods.okddip import OKDDip
from peerkd.methods.parts.multibranch import TargetBuilder
from peerkd.core.registry import register_method


@register_method("mde")
class MDE(OKDDip):
    """MDE (Li et al. 2020): two-level distillation with a Feature Fusion Module target and the CD loss."""

    @dataclass
    class Options(OKDDip.Options):
        model: str = "resnet32"  # backbone of every branch (a registered model name)
        model_options: dict = field(default_factory=dict)  # keyword arguments for the backbone's factory
        branches: int = 4  # m = 4: three auxiliary branches and a group leader (section 4.1)
        target: TargetBuilder = "ffm"  # the Feature Fusion Module (eq. 4); gate / attention for the Table 6 ablation
        fusion_blocks: int = 1  # conv-BN-ReLU blocks in the FFM (Fig. 2 shows one centre block)
        fusion_kernel: int = 1  # FFM conv kernel: 1x1 (lighter than OKDDip's attention; 3: the earlier reading)
        fusion_reduction: int = 16  # FFM conv width = one branch's channels / 16 (1: keep them, the earlier reading)
        temperature: float = 3.0  # T = 3 (section 4.1)
        peer_weight: float = 1.0  # alpha = 1 (section 4.1)
        leader_weight: float = 2.0  # beta = 2 (section 4.1)
        cd_weight: float = 5e-8  # gamma = 5e-8 (section 4.1, Fig. 3)
