"""The sigmoid ramp-up of a distillation weight (Laine & Aila 2017), used by ONE's, OKDDip's and PCL's code."""
from __future__ import annotations

import math


def sigmoid_rampup(epoch: float, length: float) -> float:
    """``exp(-5 (1 - min(epoch, L) / L)^2)``, 1 when ``L <= 0``: the weight rises over the first ``L`` epochs."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(epoch), 0.0), length) / length
    return math.exp(-5.0 * phase * phase)
