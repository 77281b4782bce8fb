"""torchvision v2 transforms built from a model's preprocessing and the data's augmentation.

An image goes through two stages: ``resize_transform`` (to a uint8 tensor at the
model's input size: deterministic, so caches may keep its output) and
``view_transform`` (the random flips/rotation, then float conversion and
normalization: run once per view).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
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


def batched(augment: Mapping[str, float] | None) -> bool:
    """Whether ``batch_views`` does what ``view_transform`` does for this augmentation (flips and
    rotation only: the forensic JPEG and blur steps run per view)."""
    return not any((augment or {}).get(k) for k in ("jpeg", "blur"))


def draw_views(
    n: int, augment: Mapping[str, float] | None, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random parameters of n views, as ``view_transform`` draws them: ``hflip`` and ``vflip``
    (bool masks, with their probabilities) and ``angle`` (degrees, uniform in +/-``rotation``)."""
    augment = augment or {}
    return {
        "hflip": torch.rand(n, generator=generator) < float(augment.get("hflip") or 0),
        "vflip": torch.rand(n, generator=generator) < float(augment.get("vflip") or 0),
        "angle": (torch.rand(n, generator=generator) * 2 - 1) * float(augment.get("rotation") or 0),
    }


def apply_views(x: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Flip and rotate each image of a uint8 batch (N, 3, H, W) by its own parameters (``draw_views``),
    in one call each for the batch; rotation about the centre, counter-clockwise, nearest neighbour,
    zero fill, as torchvision's ``rotate``. Returns float (0-255)."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]

    def mask(name: str) -> torch.Tensor:
        return params[name].to(x.device).view(n, 1, 1, 1)

    x = torch.where(mask("hflip"), x.flip(-1), x)
    x = torch.where(mask("vflip"), x.flip(-2), x).float()
    if not params["angle"].any():
        return x
    angle = params["angle"].double() * math.pi / 180
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    # Each output pixel samples the input at the point rotated back, in grid_sample's coordinates
    # (-1..1 along each side, so the off-diagonal terms carry the aspect ratio).
    rows = [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta.float().to(x.device), [n, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def batch_views(
    images: torch.Tensor,
    views: int,
    preprocess: Mapping[str, Any],
    augment: Mapping[str, float] | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """``views`` augmented views of each resized uint8 image (N, 3, H, W), as tensor ops on the batch.

    The views are ``view_transform``'s (same flips, rotation and normalization, drawn per
    view from ``generator``), but made by one flip and one ``grid_sample`` call for the
    whole batch instead of a transform per view: on a 2-core CPU per-view transforms held
    the backbone to ~70 % of its rate.

    Returns:
        Normalized float views (N * views, 3, H, W): image i's at i * views ... (i + 1) * views - 1.
    """
    x = images.repeat_interleave(views, 0)
    x = apply_views(x, draw_views(x.shape[0], augment, generator))
    mean = torch.tensor(list(preprocess["mean"]), device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(list(preprocess["std"]), device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std
