"""torchvision v2 transforms built from a model's preprocessing and the data's augmentation.

An image goes through two stages: ``resize_transform`` (to a uint8 tensor at the
model's input size: deterministic, so caches may keep its output) and
``view_transform`` (the random flips/rotation, then float conversion and
normalization: run once per view).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

FORENSIC_JPEG_QUALITY = (30, 95)
FORENSIC_BLUR_SIGMA = (0.1, 3.0)


def resize_transform(preprocess: Mapping[str, Any]) -> T.Compose:
    """Image -> uint8 tensor of the model's input size."""
    size = int(preprocess["size"])
    interpolation = InterpolationMode(preprocess["interpolation"])
    return T.Compose([T.ToImage(), T.Resize((size, size), interpolation=interpolation, antialias=True)])


def view_transform(preprocess: Mapping[str, Any], augment: Mapping[str, float] | None = None) -> T.Compose:
    """Resized uint8 tensor -> normalized float tensor, with the seed's flip/rotate augmentation.

    Args:
        preprocess: The model's preprocessing: ``mean`` and ``std``.
        augment: ``hflip`` and ``vflip`` probabilities and ``rotation`` in degrees (+/-);
            the forensic hardening's ``jpeg`` and ``blur`` probabilities (a JPEG re-save at
            a random quality in FORENSIC_JPEG_QUALITY, a Gaussian blur of a random sigma in
            FORENSIC_BLUR_SIGMA, as CNNDetection trains); None for evaluation (deterministic).
    """
    augment = augment or {}
    steps: list[Any] = []
    # Zero-strength steps are left out: they would still draw random numbers.
    if augment.get("jpeg"):
        steps.append(T.RandomApply([T.JPEG(FORENSIC_JPEG_QUALITY)], p=augment["jpeg"]))
    if augment.get("blur"):
        blur = T.GaussianBlur(2 * int(3 * FORENSIC_BLUR_SIGMA[1]) + 1, FORENSIC_BLUR_SIGMA)
        steps.append(T.RandomApply([blur], p=augment["blur"]))
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


def build_transform(preprocess: Mapping[str, Any], augment: Mapping[str, float] | None = None) -> T.Compose:
    """Image -> normalized float tensor: both stages."""
    return T.Compose([resize_transform(preprocess), view_transform(preprocess, augment)])
