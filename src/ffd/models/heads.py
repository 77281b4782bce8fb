"""Classification heads on top of a backbone's output."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ffd import rules


def build_head(kind: str, shape: Sequence[int], num_classes: int, dropout: float) -> nn.Module:
    """Map the backbone's output of one image (``shape``: (C, h, w), or (D,)) to class logits.

    ``flatten`` is the seed's head (Keras Flatten + Dense): one weight per
    feature-map cell, so it keeps where in the face a feature fired.
    ``avgpool`` averages over space first (the usual ImageNet head).
    ``embedding`` is one linear layer on the backbone's own embedding (D,), which the
    backbone pooled (and projected) itself: a linear probe, as UnivFD trains.
    ``dropout`` > 0 drops features before the linear layer (training only).
    The linear layer is always the last module (``head[-1]``).
    """
    rules.check_all({"model.head": kind, "model.dropout": dropout})
    pool = [nn.AdaptiveAvgPool2d(1)] if kind == "avgpool" else []
    flat = [] if kind == "embedding" else [nn.Flatten()]
    width_in = math.prod(shape) if kind == "flatten" else shape[0]
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*pool, *flat, *drop, nn.Linear(width_in, num_classes))
