"""BYOT's shallow-stage adapters: the modules that bring a shallow stage's map to the deepest map's channels and
resolution before a shallow classifier (Zhang et al., "Be Your Own Teacher", ICCV 2019: "bottleneck layer").

Three designs, chosen by ``adapter`` (``method.adapter`` of BYOT and PS-KD + BYOT + DMFL):

- ``"bottleneck"`` (default): ONE bottleneck per shallow stage, 1x1 conv to a quarter of the deepest width, a k x k
  conv of stride k (k = the resolution ratio, 8 / 4 / 2 for the stages of a 4-stage CIFAR ResNet), 1x1 conv to the
  deepest width, each followed by BN and ReLU, convolutions with a bias. This is ``branchBottleNeck`` of the BYOT
  CIFAR code, luanyunteng/pytorch-be-your-own-teacher, ``models/resnet.py`` (its ``downsample*_1`` modules are built
  but never called, so they are not counted). With it the ResNet-18 / ResNet-50 BYOT networks of Chottananurak et al.
  (paper 004) have 13.01 M / 50.43 M parameters at 100 classes: Table 1's 13.0 M and 50.4 M.
- ``"sepconv"``: the BYOT authors' own release, ArchipLab-LinfengZhang/pytorch-self-distillation-final,
  ``resnet.py`` (``attention1..3``, ``scala1..3``): an attention gate (a separable-conv unit of stride 2, then
  BatchNorm2d, ReLU, bilinear upsampling x2, sigmoid) multiplying the stage's map, then one separable-conv unit
  (depthwise 3x3 of stride 2, 1x1, BN, ReLU, depthwise 3x3, 1x1, BN, ReLU; no biases) per following stage, its
  channels those of that stage. The gate's own BN + ReLU after its unit are the release's (``attention*`` =
  SepConv -> BatchNorm2d -> ReLU -> Upsample -> Sigmoid): 2 x (64 + 128 + 256) x expansion parameters, 896 on
  ResNet-18, 3,584 on ResNet-50 / ResNeXt-50 (held against the release in ``tests/golden/test_byot_release.py``).
  On the CIFAR ResNeXt-50 (32x4d) this gives 37,898,448 parameters (the release's ``net`` as built, before its
  training loop adds the hint's Linear adaptation layers): paper 004's Table 1 ResNeXt-50 figure (37.9 M). The same
  paper's ResNet figures do not fit this design (12.28 M / 38.43 M), and the ``"bottleneck"`` design gives 49.90 M
  on ResNeXt-50: so the paper's ResNeXt-50 ran the authors' release (the only BYOT code with a ResNeXt-50), its
  ResNets the CIFAR code above (which has only ResNet-18/50). Paper 004's ResNeXt-50 configs therefore set
  ``adapter: sepconv``. (The release's ``train.py`` builds ``resnet18()`` for ``--model resnext50_32x4d``, a slip
  of its own; the network meant, and counted here, is its ``resnet.py`` ``resnext50_32x4d``.)
- ``"chain"``: peerkd's earlier reading, one bottleneck (1x1 to a quarter, 3x3 stride 2, 1x1, BN + ReLU, no biases)
  per halving, channels doubling up to the deepest width: 12.26 M / 38.35 M / 37.83 M; kept for comparison.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.core.errors import ConfigError

AdapterDesign = Literal["bottleneck", "sepconv", "chain"]  # the shallow-stage adapter designs (an Options choice)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, bias: bool) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=bias), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def _ratio(in_size: int, out_size: int) -> int:
    if out_size <= 0 or in_size % out_size:
        raise ValueError(f"cannot adapt a {in_size}px map to {out_size}px: the ratio must be an integer")
    return in_size // out_size


def bottleneck_adapter(in_ch: int, in_size: int, out_ch: int, out_size: int) -> nn.Module:
    """The BYOT CIFAR code's adapter: 1x1 (out/4), k x k stride k, 1x1 (out), BN + ReLU after each, biased convs."""
    k = _ratio(in_size, out_size)
    mid = max(out_ch // 4, 1)
    return nn.Sequential(*_conv_bn_relu(in_ch, mid, 1, 1, 0, True), *_conv_bn_relu(mid, mid, k, k, 0, True),
                         *_conv_bn_relu(mid, out_ch, 1, 1, 0, True))


class SepConv(nn.Sequential):
    """Two separable 3x3 convolutions (depthwise then 1x1, BN, ReLU), the first one strided; no biases."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False), nn.Conv2d(in_ch, in_ch, 1, bias=False),
            nn.BatchNorm2d(in_ch), nn.ReLU(),
            nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False), nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU())


class AttentionSepConvAdapter(nn.Module):
    """The BYOT authors' adapter: ``x * sigmoid(up2(relu(bn(SepConv(x)))))`` then one SepConv per following stage.

    ``gate`` is the release's ``attention*`` up to its upsampling (``gate.0`` its SepConv, ``gate.1`` its
    BatchNorm2d), ``steps`` its ``scala*`` without the final pooling (the classifier's head pools)."""

    def __init__(self, in_ch: int, in_size: int, following: list[tuple[int, int]]):
        super().__init__()
        if in_size % 2:
            raise ValueError(f"the attention gate halves then doubles the map: {in_size}px is odd")
        self.gate = nn.Sequential(SepConv(in_ch, in_ch, 2), nn.BatchNorm2d(in_ch), nn.ReLU())
        steps, ch, size = [], in_ch, in_size
        for next_ch, next_size in following:
            stride = _ratio(size, next_size)
            if stride not in (1, 2):
                raise ValueError(f"a separable-conv step takes {size}px to {size // 2} or {size}px, not {next_size}px")
            steps.append(SepConv(ch, next_ch, stride))
            ch, size = next_ch, next_size
        self.steps = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(F.interpolate(self.gate(x), scale_factor=2, mode="bilinear"))
        return self.steps(x * attention)


def chain_adapter(in_ch: int, in_size: int, out_ch: int, out_size: int) -> nn.Module:
    """peerkd's earlier adapter: one 3x3-stride-2 bottleneck per halving, channels doubling up to ``out_ch``."""
    ratio = _ratio(in_size, out_size)
    if ratio & (ratio - 1):
        raise ValueError(f"cannot adapt a {in_size}px map to {out_size}px: the ratio must be a power of 2")
    halvings = int(math.log2(ratio))

    def unit(cin: int, cout: int, stride: int) -> nn.Sequential:
        mid = max(cout // 4, 1)
        return nn.Sequential(*_conv_bn_relu(cin, mid, 1, 1, 0, False), *_conv_bn_relu(mid, mid, 3, stride, 1, False),
                             *_conv_bn_relu(mid, cout, 1, 1, 0, False))

    if halvings == 0:
        return nn.Identity() if in_ch == out_ch else unit(in_ch, out_ch, 1)
    steps, ch = [], in_ch
    for k in range(halvings):
        nxt = out_ch if k == halvings - 1 else min(ch * 2, out_ch)
        steps.append(unit(ch, nxt, 2))
        ch = nxt
    return nn.Sequential(*steps)


def make_adapters(design: AdapterDesign, shapes: list[tuple[int, int]]) -> list[nn.Module]:
    """One adapter per shallow stage, from the ``(channels, size)`` after every stage (the last one the deepest)."""
    out_ch, out_size = shapes[-1]
    try:
        if design == "sepconv":
            return [AttentionSepConvAdapter(c, s, shapes[i + 1:]) for i, (c, s) in enumerate(shapes[:-1])]
        build = bottleneck_adapter if design == "bottleneck" else chain_adapter
        return [build(c, s, out_ch, out_size) for c, s in shapes[:-1]]
    except ValueError as err:
        raise ConfigError(f"method.adapter: {design}: {err}") from None
