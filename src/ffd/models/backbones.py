"""Backbones by name, with the preprocessing their weights expect."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from ffd.errors import ConfigError
from ffd.models.weights import load_state_dict


def build_backbone(
    name: str, pretrained: bool = True, weights: str = "DEFAULT"
) -> tuple[nn.Module, dict[str, Any]]:
    """A torchvision classification model's convolutional trunk (no pooling, no classifier).

    Args:
        name: torchvision model name with a ``features`` trunk (mobilenet_v2,
            mobilenet_v3_large, efficientnet_b0, convnext_tiny, vgg16, ...).
        pretrained: Load the ImageNet weights (offline via the hub cache, see
            ``ffd.models.weights``); False = random init.
        weights: Which weights enum member (``IMAGENET1K_V1``, ``DEFAULT``, ...).

    Returns:
        The trunk, and its preprocessing defaults (``mean``, ``std``, ``interpolation``),
        taken from the weights' own transforms.
    """
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as err:
        raise ConfigError(f"Unknown torchvision backbone {name!r}: {err}") from None
    try:
        w = enum[weights]
    except KeyError:
        raise ConfigError(
            f"{name} has no weights {weights!r}; choose from {[m.name for m in enum]}."
        ) from None
    model = torchvision.models.get_model(name, weights=None)
    if not hasattr(model, "features"):
        raise ConfigError(f"torchvision model {name!r} has no 'features' trunk; pick e.g. mobilenet_v2.")
    if pretrained:
        model.load_state_dict(load_state_dict(w))
    t = w.transforms()
    preprocess = {"mean": list(t.mean), "std": list(t.std), "interpolation": t.interpolation.value}
    return model.features, preprocess
