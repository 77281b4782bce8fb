"""Grad-CAM heatmaps for the fake class, and how much of a heatmap falls on the edited parts.

Own implementation (about 30 lines) rather than the ``grad-cam`` package: ffd's
model is already split into a convolutional trunk and a head, so the "last
conv block" is simply the trunk's output, and one autograd call through the
head gives its gradient; the trunk itself runs without a graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ffd.data.io import ImageDecodeError, load_rgb
from ffd.data.manifest import FAKE, PARTS, REAL, replaced_parts
from ffd.data.synthetic import PART_BOXES, SIZE
from ffd.data.transforms import resize_transform, view_transform
from ffd.errors import ConfigError
from ffd.models.module import FakeFaceClassifier

log = logging.getLogger(__name__)

METHODS = ("gradcam", "hirescam")
Box = tuple[float, float, float, float]


def grad_cam(
    model: FakeFaceClassifier, x: torch.Tensor, method: str = "gradcam"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps of the evidence for "fake", at input resolution, each scaled to [0, 1].

    The target is the log-odds ``logit_fake - logit_real``: with two softmax
    classes only the difference moves the prediction. ``gradcam`` weighs each
    channel of the trunk's feature map by its spatially averaged gradient
    (Selvaraju et al.); ``hirescam`` multiplies gradient and activation cell by
    cell (Draelos & Carin), which for the flatten head is exactly each cell's
    contribution to the log-odds, where Grad-CAM's averaging blurs it.

    Args:
        model: An ffd classifier (``features`` trunk and ``head``), in eval mode.
        x: Normalized images (N, 3, H, W).

    Returns:
        Heatmaps (N, H, W), and p_fake (N,).
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown CAM method {method!r}; choose from {METHODS}.")
    with torch.no_grad():
        feats = model.features(x).float()
    feats.requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(feats).float()
        (grads,) = torch.autograd.grad((logits[:, FAKE] - logits[:, REAL]).sum(), feats)
    weights = grads.mean((2, 3), keepdim=True) if method == "gradcam" else grads
    cam = F.relu((weights * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach(), logits.softmax(-1)[:, FAKE].detach()


def explain_files(
    model: FakeFaceClassifier, files: Sequence[Path], method: str = "gradcam", batch_size: int = 32
) -> Iterator[tuple[Path, torch.Tensor, torch.Tensor, float]]:
    """(path, resized uint8 image, heatmap, p_fake) for each readable file; unreadable ones are logged."""
    resize, view = resize_transform(model.preprocess), view_transform(model.preprocess)
    size = model.preprocess["size"]
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, resize(load_rgb(path, size))))
            except ImageDecodeError as err:
                log.warning("Skipped %s: %s", path, err)
        if loaded:
            x = torch.stack([view(img) for _, img in loaded]).to(model.device)
            cams, probs = grad_cam(model, x, method)
            for (path, img), cam, p in zip(loaded, cams.cpu(), probs.tolist(), strict=True):
                yield path, img, cam, p


def part_boxes(parts: Sequence[str], size: int) -> list[Box]:
    """The boxes of the named parts, scaled to a size x size input.

    They are the boxes of the aligned 600x600 face that the synthetic generator
    edits (``ffd.data.synthetic.PART_BOXES``): exact for synthetic fakes up to
    the face's pose jitter; CIPLAB's aligned faces put the parts at about the same places.
    """
    scale = size / SIZE
    return [tuple(v * scale for v in PART_BOXES[part]) for part in parts]  # type: ignore[misc]


def box_mask(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """A boolean (height, width) mask of the union of the boxes: the pixels whose centres lie inside."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        # Pixel i's centre i + 0.5 lies in [a, b) for i in [ceil(a - 0.5), ceil(b - 0.5)).
        rows, cols = (slice(math.ceil(a - 0.5), math.ceil(b - 0.5)) for a, b in ((y0, y1), (x0, x1)))
        mask[rows, cols] = True
    return mask


def localization(cam: torch.Tensor, boxes: Sequence[Box]) -> tuple[float, float]:
    """The share of a heatmap's mass inside the boxes, and the share of the image they cover (chance).

    A model that looks at the edit scores well above the area share; one that
    looks elsewhere (a shortcut) scores at or below it. NaN for an all-zero map.
    """
    heat = cam.numpy()
    mask = box_mask(boxes, *heat.shape)
    total = float(heat.sum())
    inside = float(heat[mask].sum()) / total if total > 0 else float("nan")
    return inside, float(mask.mean())


def localization_report(items: Iterable[tuple[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """Mean heatmap share inside the replaced parts, against the share of the image they cover.

    Args:
        items: (part bits, heatmap (H, W)) per image; images without replaced parts are skipped.

    Returns:
        ``{"all": ..., "left_eye": ..., ...}``: for all replaced parts together
        and for each part (its own box, over the fakes where it was replaced):
        n, ``mass_inside`` and ``area_share``. ``n_empty`` counts all-zero
        heatmaps (no evidence for "fake" anywhere), left out of ``mass_inside``.
    """
    scores: dict[str, list[tuple[float, float]]] = {"all": [], **{p: [] for p in PARTS}}
    for bits, cam in items:
        names = replaced_parts(bits)
        if names:
            scores["all"].append(localization(cam, part_boxes(names, cam.shape[-1])))
        for name in names:
            scores[name].append(localization(cam, part_boxes([name], cam.shape[-1])))
    report = {}
    for name, values in scores.items():
        inside = [s[0] for s in values if not math.isnan(s[0])]
        if values:
            report[name] = {
                "n": len(values),
                "n_empty": len(values) - len(inside),  # maps with no evidence for "fake" anywhere
                "mass_inside": float(np.mean(inside)) if inside else float("nan"),
                "area_share": float(np.mean([s[1] for s in values])),
            }
    return report


def overlay(
    image: torch.Tensor, cam: torch.Tensor, boxes: Sequence[Box] = (), alpha: float = 0.5
) -> Image.Image:
    """An RGB image (3, H, W uint8) blended with its heatmap in the jet colormap; boxes drawn in white."""
    heat = (colormaps["jet"](cam.numpy())[..., :3] * 255).astype(np.uint8)
    base = image.permute(1, 2, 0).numpy()
    out = Image.fromarray((base * (1 - alpha) + heat * alpha).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box in boxes:
        draw.rectangle(box, outline=(255, 255, 255), width=1)
    return out
