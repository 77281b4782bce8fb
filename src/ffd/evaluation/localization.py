"""How much of a heatmap falls on the edited parts: the localization score.

A fake's replaced parts are known from its CIPLAB name (``ffd.data.facts``); a model
that looks at the edit puts more of its heatmap inside their boxes than the share of
the image they cover (chance), one that looks elsewhere (a shortcut) does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ffd.data.facts import PARTS, Box, part_boxes, replaced_parts


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
