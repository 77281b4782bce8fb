"""Classification heads on top of a backbone's feature map."""

from __future__ import annotations

from torch import nn

from ffd.errors import ConfigError


def build_head(kind: str, channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    """Map a (channels, height, width) feature map to class logits.

    ``flatten`` is the seed's head (Keras Flatten + Dense): one weight per
    feature-map cell, so it keeps where in the face a feature fired.
    ``avgpool`` averages over space first (the usual ImageNet head).
    """
    if kind == "flatten":
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))
    if kind == "avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    raise ConfigError(f"Unknown head {kind!r}; choose 'flatten' or 'avgpool'.")
