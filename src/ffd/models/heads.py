"""Classification heads on top of a backbone's feature map."""

from __future__ import annotations

from torch import nn

from ffd import rules


def build_head(
    kind: str, channels: int, height: int, width: int, num_classes: int, dropout: float
) -> nn.Module:
    """Map a (channels, height, width) feature map to class logits.

    ``flatten`` is the seed's head (Keras Flatten + Dense): one weight per
    feature-map cell, so it keeps where in the face a feature fired.
    ``avgpool`` averages over space first (the usual ImageNet head).
    ``dropout`` > 0 drops features before the linear layer (training only).
    The linear layer is always the last module (``head[-1]``).
    """
    rules.check_all({"model.head": kind, "model.dropout": dropout})
    pool = [nn.AdaptiveAvgPool2d(1)] if kind == "avgpool" else []
    width_in = channels if kind == "avgpool" else channels * height * width
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*pool, nn.Flatten(), *drop, nn.Linear(width_in, num_classes))
