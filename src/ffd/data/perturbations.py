"""Perturbations an image meets outside a clean test split: re-compression, resizing, blur, noise,
another decoder, a social-media pipeline. Built on torchvision's v2 transforms.

Every operation takes the image as a uint8 (3, H, W) tensor, decoded once at full size from
the file, plus the file's bytes (for re-decoding), and returns a uint8 (3, H', W') tensor. A
family of ``conf/robustness/`` names one operation and its severities; ``chain`` runs
several (``[[op, value], ...]``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.io import decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from ffd.errors import ConfigError

Op = Callable[[torch.Tensor, Any, bytes], torch.Tensor]


def jpeg(x: torch.Tensor, quality: int, _: bytes) -> torch.Tensor:
    """Re-compress as JPEG at ``quality`` (1-100)."""
    return T.JPEG(int(quality))(x)


def rescale(x: torch.Tensor, scale: float, _: bytes) -> torch.Tensor:
    """Downscale by ``scale`` (antialiased), then upscale back to the original size (bilinear)."""
    h, w = x.shape[-2:]
    if scale >= 1:
        return x
    small = F.resize(x, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    return F.resize(small, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)


def resize_long(x: torch.Tensor, side: int, _: bytes) -> torch.Tensor:
    """Resize so the longer side is ``side`` pixels (what sharing services do to uploads)."""
    h, w = x.shape[-2:]
    s = side / max(h, w)
    return F.resize(x, [round(h * s), round(w * s)], antialias=True)


def blur(x: torch.Tensor, sigma: float, _: bytes) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (0: none)."""
    if sigma <= 0:
        return x
    k = 2 * int(3 * sigma) + 1
    return F.gaussian_blur(x, [k, k], [float(sigma)])


def noise(x: torch.Tensor, sigma: float, _: bytes) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``sigma`` (on the 0-1 scale), clipped."""
    if sigma <= 0:
        return x
    noisy = T.GaussianNoise(sigma=float(sigma), clip=True)(F.to_dtype(x, torch.float32, scale=True))
    return F.to_dtype(noisy, torch.uint8, scale=True)


def redecode(x: torch.Tensor, variant: str, data: bytes) -> torch.Tensor:
    """A benign change that shows nothing to a person: ``full_decode`` (every DCT coefficient, where
    ffd decodes JPEGs at reduced size), ``torchvision_decoder`` (libjpeg via torchvision instead of
    Pillow), ``resave_95`` (one more JPEG save at quality 95), ``crop_1px`` (one pixel off each side)."""
    if variant == "full_decode":
        return x
    if variant == "torchvision_decoder":
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
    if variant == "resave_95":
        buf = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=95)
        return decode_image(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), mode="RGB")
    if variant == "crop_1px":
        return x[:, 1:-1, 1:-1]
    raise ConfigError(
        f"redecode variant {variant!r} is not one of full_decode, torchvision_decoder, resave_95, crop_1px."
    )


def chain(x: torch.Tensor, steps: Sequence[Sequence[Any]], data: bytes) -> torch.Tensor:
    """Several operations in turn: ``[[op, value], ...]``."""
    for name, value in steps:
        x = op(name)(x, value, data)
    return x


OPS: dict[str, Op] = {
    "jpeg": jpeg, "rescale": rescale, "resize_long": resize_long, "blur": blur, "noise": noise,
    "redecode": redecode, "chain": chain,
}  # fmt: skip


def op(name: str) -> Op:
    """The operation called ``name`` (a family's ``op`` in ``conf/robustness/``)."""
    if name not in OPS:
        raise ConfigError(f"Unknown perturbation op {name!r}: choose one of {', '.join(OPS)}.")
    return OPS[name]


def severity_name(value: Any) -> str:
    """A severity as a table shows it: ``75``, ``0.5``, ``resave_95``, ``resize_long 512 + jpeg 75``."""
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple):
        return " + ".join(f"{n} {v}" for n, v in value)
    return str(value)
