"""torchvision v2 transforms built from a model's preprocessing and the data's augmentation.

An image goes through two stages: ``resize_transform`` (to a uint8 tensor at the
model's input size: deterministic, so caches may keep its output) and
``view_transform`` (the random flips/rotation, then float conversion and
normalization: run once per view).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

FORENSIC_JPEG_QUALITY = (30, 95)
FORENSIC_BLUR_SIGMA = (0.1, 3.0)


def resize_pixels(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Pixel values (N, 3, H, W; float, 0-255) -> (N, 3, size, size), resized as torchvision's ``Resize``
    (bilinear and bicubic antialiased) and rounded to whole values in 0-255.

    The one resize of training (its uint8 views) and of every shipped model (``ffd.models.shipped``):
    the pixels the model is validated on while it trains are those it is shipped with, so the
    checkpoint monitor scores what the shipped model scores."""
    smooth = mode in ("bilinear", "bicubic")
    x = F.interpolate(
        images, size=(size, size), mode=mode, antialias=smooth, align_corners=False if smooth else None
    )
    return x.round_().clamp_(0, 255)


class ResizePixels:
    """uint8 image (3, H, W) -> uint8 (3, size, size) by ``resize_pixels``."""

    def __init__(self, size: int, mode: str) -> None:
        self.size, self.mode = size, InterpolationMode(mode).value

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return resize_pixels(image[None].float(), self.size, self.mode)[0].to(torch.uint8)


def resize_transform(preprocess: Mapping[str, Any]) -> T.Compose:
    """Image -> uint8 tensor of the model's input size (``resize_pixels``)."""
    return T.Compose([T.ToImage(), ResizePixels(int(preprocess["size"]), str(preprocess["interpolation"]))])


def augment_steps(augment: Mapping[str, float] | None) -> list[Any]:
    """The random steps of a view on a resized uint8 tensor (it stays uint8).

    Args:
        augment: ``hflip`` and ``vflip`` probabilities and ``rotation`` in degrees (+/-);
            the forensic hardening's ``jpeg`` and ``blur`` probabilities (a JPEG re-save at
            a random quality in FORENSIC_JPEG_QUALITY, a Gaussian blur of a random sigma in
            FORENSIC_BLUR_SIGMA, as CNNDetection trains); None for evaluation (no steps).
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
    return steps


def view_transform(preprocess: Mapping[str, Any], augment: Mapping[str, float] | None = None) -> T.Compose:
    """Resized uint8 tensor -> normalized float tensor, through ``augment_steps(augment)``.

    Args:
        preprocess: The model's preprocessing: ``mean`` and ``std``.
        augment: See ``augment_steps``.
    """
    return T.Compose(
        [
            *augment_steps(augment),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(list(preprocess["mean"]), list(preprocess["std"])),
        ]
    )


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


def rgbx(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> the pixels a backbone runner takes (``PixelsIn`` of
    ``ffd.engine.runtimes.runner``): uint8 (N, H, W, 4), RGB and a zero byte, a pixel one 4-byte word."""
    n, _, h, w = images.shape
    return _words(images).view(torch.uint8).view(n, h, w, 4)


def _words(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> int32 (N, H, W): each pixel's RGBX bytes as one little-endian
    word (4x as fast as a permuted uint8 copy)."""
    assert sys.byteorder == "little"
    w = images[:, 2].to(torch.int32).bitwise_left_shift_(8)
    w.bitwise_or_(images[:, 1]).bitwise_left_shift_(8)
    return w.bitwise_or_(images[:, 0])


def apply_views(images: torch.Tensor, params: Mapping[str, torch.Tensor], views: int) -> torch.Tensor:
    """Flip and rotate uint8 images (N, 3, H, W) into N * views views, view j of image j // views by
    its parameters (``draw_views``): as torchvision's flips then ``rotate`` (about the centre,
    counter-clockwise, nearest neighbour, zero fill).

    Returns:
        The views as ``rgbx`` pixels (N * views, H, W, 4).

    Each view is one gather of 4-byte RGBX words: its output pixels' source indices (flips and
    rotation in one map) into the image padded with zeros far enough that every rotated pixel
    lands inside, so no bounds test is needed. (A gather per channel of normalized floats cost
    ~4x as much on a CPU, a per-batch ``affine_grid`` + ``grid_sample`` ~16x.) Nearest-neighbour
    ties round up here and to even in torchvision: a few pixels in 10^4 of a rotated view may
    take the neighbouring source pixel.
    """
    n, _, h, w = images.shape
    v, device = n * views, images.device
    if not any(bool(params[k].any()) for k in ("hflip", "vflip", "angle")):
        return rgbx(images).repeat_interleave(views, 0)
    pad = math.ceil((math.hypot(h, w) - min(h, w)) / 2) + 1
    ph, pw = h + 2 * pad, w + 2 * pad
    words = torch.zeros(n, ph, pw, dtype=torch.int32, device=device)
    words[:, pad : pad + h, pad : pad + w] = _words(images)
    words = words.view(n, ph * pw)

    angle = params["angle"].double() * math.pi / 180
    cos, sin = angle.cos().view(v, 1, 1), angle.sin().view(v, 1, 1)
    sx = 1 - 2 * params["hflip"].double().view(v, 1, 1)  # a flip mirrors the source coordinate
    sy = 1 - 2 * params["vflip"].double().view(v, 1, 1)
    xo = (torch.arange(w, dtype=torch.float64) + (0.5 - w / 2)).view(1, 1, w)  # from the centre
    yo = (torch.arange(h, dtype=torch.float64) + (0.5 - h / 2)).view(1, h, 1)
    # The source pixel's column sx (cos x - sin y) + pw / 2 - 0.5 and row sy (sin x + cos y) + ph / 2 - 0.5
    # in the padded image, + 0.5 so that truncation rounds (they are all positive).
    col_x, col_y = (sx * cos * xo + pw / 2).float().to(device), (sx * sin * yo).float().to(device)
    row_x, row_y = (sy * sin * xo).float().to(device), (sy * cos * yo + ph / 2).float().to(device)
    out = torch.empty(v, h * w, dtype=torch.int32, device=device)
    for j in range(v):  # view by view: each one's index map stays in cache
        idx = (row_x[j] + row_y[j]).to(torch.int32).mul_(pw).add_((col_x[j] - col_y[j]).to(torch.int32))
        torch.index_select(words[j // views], 0, idx.view(-1), out=out[j])
    return out.view(torch.uint8).view(v, h, w, 4)


def batch_views(
    images: torch.Tensor, views: int, augment: Mapping[str, float] | None, generator: torch.Generator
) -> torch.Tensor:
    """``views`` augmented views of each resized uint8 image (N, 3, H, W), as tensor ops on the batch.

    The views are ``view_transform``'s flips and rotation (drawn per view from ``generator``),
    made by one gather per view (``apply_views``) instead of a transform per view: per-view
    transforms held the backbone well below its rate on a small CPU. The backbone's runner
    normalizes them (``ffd.engine.runtimes.runner.PixelsIn``).

    Returns:
        ``rgbx`` pixels (N * views, H, W, 4): image i's views at i * views ... (i + 1) * views - 1.
    """
    return apply_views(images, draw_views(len(images) * views, augment, generator), views)
