"""The metadata-only baseline: can file properties alone tell real from fake?

If a classifier that never looks at a face (file size, JPEG quantization,
EXIF presence, image size) separates the classes, the data set has a shortcut
that a face model may learn instead of the edit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from PIL import Image

from ffd.data.records import Record
from ffd.metrics.scores import ranking

FEATURES = ("log_file_size", "luma_quant_mean", "chroma_quant_mean", "has_exif", "width", "height")
SHORTCUT_AUROC = 0.7  # out-of-fold AUROC above this: a shortcut worth reporting
FOLDS = 5  # the baseline is scored out of fold, over this many folds


def file_features(path: str) -> list[float]:
    """The FEATURES of one image file (quantization means are 0 for non-JPEGs)."""
    with Image.open(path) as img:
        tables = getattr(img, "quantization", None) or {}
        luma = sum(tables.get(0, [0])) / max(len(tables.get(0, [0])), 1)
        chroma = sum(tables.get(1, [0])) / max(len(tables.get(1, [0])), 1)
        exif = float(bool(img.info.get("exif")))
        width, height = img.size
    return [math.log(os.path.getsize(path)), luma, chroma, exif, float(width), float(height)]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Linear:
    model = torch.nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=steps)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        loss = loss + 1e-3 * model.weight.pow(2).sum()  # a little L2: separable data stays finite
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def metadata_baseline(records: Sequence[Record], seed: int) -> dict[str, float | bool]:
    """Out-of-fold AUROC of a logistic regression on file metadata alone.

    Returns:
        ``auroc`` (cross-validated over all usable images), ``n``, ``folds`` and ``shortcut``
        (AUROC above SHORTCUT_AUROC).
    """
    rows = [r for r in records if r.ok]
    x = torch.tensor([file_features(r.path) for r in rows], dtype=torch.float32)
    y = torch.tensor([r.label for r in rows])
    fold_of = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)) % FOLDS
    scores = torch.empty(len(rows))
    for k in range(FOLDS):
        train, test = fold_of != k, fold_of == k
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        model = _fit_logistic((x[train] - mean) / std, y[train])
        with torch.no_grad():
            scores[test] = torch.sigmoid(model((x[test] - mean) / std).squeeze(1))
    auroc = ranking(scores, y)["auroc"]
    return {"auroc": auroc, "n": len(rows), "folds": FOLDS, "shortcut": bool(auroc > SHORTCUT_AUROC)}
