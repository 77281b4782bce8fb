"""torchvision v2 transforms built from a model's preprocessing and the data's augmentation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


def build_transform(preprocess: Mapping[str, Any], augment: Mapping[str, float] | None = None) -> T.Compose:
    """Image -> normalized float tensor, with the seed's flip/rotate augmentation when given.

    Args:
        preprocess: The model's preprocessing: ``size``, ``mean``, ``std``, ``interpolation``.
        augment: ``hflip`` and ``vflip`` probabilities and ``rotation`` in degrees (+/-);
            None for evaluation (deterministic).
    """
    size = int(preprocess["size"])
    steps: list[Any] = [
        T.ToImage(),
        T.Resize((size, size), interpolation=InterpolationMode(preprocess["interpolation"]), antialias=True),
    ]
    augment = augment or {}
    # Zero-strength steps are left out: they would still draw random numbers.
    if augment.get("hflip"):
        steps.append(T.RandomHorizontalFlip(augment["hflip"]))
    if augment.get("vflip"):
        steps.append(T.RandomVerticalFlip(augment["vflip"]))
    if augment.get("rotation"):
        steps.append(T.RandomRotation(augment["rotation"]))
    steps += [
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(preprocess["mean"]), list(preprocess["std"])),
    ]
    return T.Compose(steps)
