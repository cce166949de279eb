"""VGG with BatchNorm for CIFAR, after Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015 (configurations D = VGG-16 and E = VGG-19).

Five groups of 3x3 conv-BN-ReLU layers (64, 128, 256, 512, 512 channels; 2-2-3-3-3 convolutions for VGG-16, 2-2-4-4-4
for VGG-19). The CIFAR forms differ between code bases in their pooling, convolution biases and classifier; three are
registered (parameter counts at 100 classes):

- ``vgg16_okddip`` / ``vgg19_okddip``: the OKDDip code's CIFAR VGG, DefangChen/OKDDip ``models/model_cifar/vgg.py``:
  biased convolutions, a 2x2 max-pool after every group (32 -> 1 px), the 512-d map flattened, then a classifier of
  three linear layers (512-512, ReLU, dropout; 512-512, ReLU, dropout; 512-K). 15.30 M / 20.61 M. ``dropout``
  defaults to 0 as that file (``VGG(dropout=0.0)``, ``train.py --dropout 0``); the multi-branch files of the same code,
  ``vgg_one.py`` (ONE, CL) and ``vgg_GL.py`` (OKDDip), put dropout 0.5 in every branch's classifier (``nn.Dropout()``,
  ``dropout = 0.5``), so the ONE / OKDDip / CL configs on these networks set ``model_options: {dropout: 0.5}``. CutnMix
  (paper 003) means this network: its authors' DLB code (Meta-knowledge-Lab/DLB, ``models/vgg.py``; same five authors)
  carries this file, next to the OKDDip ``resnet.py`` with paper 003's other networks (ResNet-32, ResNet-110, WRN-20-8),
  and paper 003 runs ONE / OKDDip as its baselines.
- ``vgg16_crd`` / ``vgg19_crd``: CRD's, HobbitLong/RepDistiller ``models/vgg.py``: biased convolutions, max-pools
  after groups 1-3 only on 32-px input (the fourth pool runs only on 64-px input), so groups 4 and 5 see 4x4 maps,
  then global average pooling and one linear layer. 14.77 M / 20.09 M.
- ``vgg16`` / ``vgg19`` (peerkd's earlier form, kept for the runs that used it): no convolution biases, max-pools
  before groups 2-5 (final map 2x2), global average pooling and one linear layer. 14.77 M / 20.08 M.

Contract: ``stem`` is the first conv-BN-ReLU; ``stages[0]`` the rest of group 1; ``stages[1..4]`` groups 2-5 with
their pools where the code base puts them; ``head`` pooling (+ the hidden layers) + linear (``head.features`` is the
512-wide vector before the classifier, what the OKDDip and CRD code return as the feature).
"""
from __future__ import annotations

import torch
from torch import nn

from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.init import init_weights
from peerkd.models.fused import register_channelwise
from peerkd.models.registry import register_model

GROUP_WIDTHS = (64, 128, 256, 512, 512)
GROUP_DEPTHS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4), 11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2)}


@register_channelwise  # pooling, then linear layers with channel-wise activations: fusable like ClassifierHead
class MLPClassifierHead(ClassifierHead):
    """Pooling, two hidden linear layers (ReLU, dropout) and the linear classifier ``fc`` (the OKDDip CIFAR VGG's)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.0):
        super().__init__(hidden, num_classes)
        self.in_features = in_features
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                    nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(features))


def conv_bn_relu(in_ch: int, out_ch: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


# the groups followed by a max-pool and the groups preceded by one, per style (CRD's pool after group 4 runs only on
# 64-px input: its 32-px form is registered)
POOLS = {"plain": (set(), {1, 2, 3, 4}), "crd": ({0, 1, 2}, set()), "okddip": ({0, 1, 2, 3, 4}, set())}


class CifarVGG(Backbone):
    def __init__(self, depth: int, num_classes: int, style: str = "plain", dropout: float = 0.0):
        super().__init__()
        if depth not in GROUP_DEPTHS:
            raise ValueError(f"VGG depth must be one of {sorted(GROUP_DEPTHS)}, got {depth}")
        if style not in POOLS:
            raise ValueError(f"VGG style must be one of {', '.join(POOLS)}, got '{style}'")
        depths, bias = GROUP_DEPTHS[depth], style != "plain"
        pool_after, pool_before = POOLS[style]
        self.stem = conv_bn_relu(3, GROUP_WIDTHS[0], bias)
        stages, in_ch = [], GROUP_WIDTHS[0]
        for group, (width, count) in enumerate(zip(GROUP_WIDTHS, depths)):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if group in pool_before else []
            for _ in range(count - 1 if group == 0 else count):  # the stem holds group 1's first convolution
                layers.append(conv_bn_relu(in_ch, width, bias))
                in_ch = width
            if group in pool_after:
                layers.append(nn.MaxPool2d(2, 2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(GROUP_WIDTHS)
        width = GROUP_WIDTHS[-1]
        self.head = (MLPClassifierHead(width, num_classes, width, dropout) if style == "okddip"
                     else ClassifierHead(width, num_classes))
        init_weights(self)
        if style != "plain":  # both code bases: conv biases 0, linear weights N(0, 0.01), linear biases 0
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)


def _register(depth: int, style: str, suffix: str, source: str):
    @register_model(f"vgg{depth}{suffix}", f"CIFAR VGG-{depth} with BatchNorm, {source}")
    def factory(num_classes: int, dropout: float = 0.0) -> CifarVGG:
        return CifarVGG(depth, num_classes, style, dropout=dropout)  # dropout: the OKDDip classifier's (code: 0)
    return factory


for _depth in GROUP_DEPTHS:
    _register(_depth, "plain", "", "4 pools (2x2 map), pooled 512-d head")
for _depth in (16, 19):
    _register(_depth, "crd", "_crd", "CRD/RepDistiller form: biased convs, 3 pools on 32 px (4x4 map), one FC")
    _register(_depth, "okddip", "_okddip", "OKDDip/DLB form: biased convs, 5 pools (1x1 map), 3 FC layers")
