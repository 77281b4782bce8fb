"""The metadata-only baseline: can file properties alone tell real from fake?

If a classifier that never looks at a face (file format, file size, JPEG quantization,
EXIF presence, image size) separates the classes, the data set has a shortcut that a
face model may learn instead of the edit. The classic one: real photographs saved as
JPEG and generated images as PNG (GenImage; Grommelt et al., "Fake or JPEG?", 2024), which
a detector can score ~100 % on by telling the formats apart. Only headers are read: a
few milliseconds an image. ``ffd train`` runs it on the training split, ``ffd eval`` on
the images it scores and ``ffd audit`` on the whole set; the fix is ``data.reencode``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ffd.data.facts import CLASS_NAMES
from ffd.data.formats import IMAGE_FORMATS
from ffd.data.records import Record
from ffd.metrics.resampling import bootstrap_intervals
from ffd.metrics.scores import ranking

# One-hot file format (every other format: all zeros), then the rest.
FEATURES = (
    *(f"format_{f.lower()}" for f in IMAGE_FORMATS),
    "log_file_size", "luma_quant_mean", "chroma_quant_mean", "has_exif", "width", "height",
)  # fmt: skip
SHORTCUT_AUROC = 0.7  # out-of-fold AUROC above this: a shortcut worth reporting
FOLDS = 5  # the baseline is scored out of fold, over this many folds
FIX = (
    "a model can learn the file instead of the face. Re-encode the training images (data.reencode=true: "
    "every image saved as JPEG at a random quality before training, so the format carries no label), "
    "and evaluate with reencode=true to see the gap."
)


def file_features(path: str) -> tuple[str, list[float]]:
    """One image file's format and FEATURES (quantization means are 0 for non-JPEGs)."""
    with Image.open(path) as img:
        fmt = "JPEG" if img.format == "MPO" else str(img.format)
        tables = getattr(img, "quantization", None) or {}
        luma = sum(tables.get(0, [0])) / max(len(tables.get(0, [0])), 1)
        chroma = sum(tables.get(1, [0])) / max(len(tables.get(1, [0])), 1)
        exif = float(bool(img.info.get("exif")))
        width, height = img.size
    one_hot = [float(fmt == f) for f in IMAGE_FORMATS]
    size = math.log(max(os.path.getsize(path), 1))
    return fmt, [*one_hot, size, luma, chroma, exif, float(width), float(height)]


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


def metadata_baseline(records: Sequence[Record], seed: int, n_bootstrap: int = 1000) -> dict[str, Any]:
    """Out-of-fold AUROC of a logistic regression on file metadata alone, with its bootstrap CI.

    Returns:
        ``auroc`` and ``auroc_ci95`` (cross-validated over the usable images), ``n``, ``folds``,
        ``formats`` (each class's count of each file format), ``shortcut`` (AUROC above
        SHORTCUT_AUROC) and ``finding``: one plain sentence, with the fix when there is a shortcut.
    """
    rows = [r for r in records if r.ok]
    read = [file_features(r.path) for r in rows]
    x = torch.tensor([f for _, f in read], dtype=torch.float32)
    y = torch.tensor([r.label for r in rows])
    formats = {name: dict(Counter(fmt for (fmt, _), r in zip(read, rows, strict=True) if r.label == label))
               for label, name in enumerate(CLASS_NAMES)}  # fmt: skip
    out: dict[str, Any] = {"n": len(rows), "folds": FOLDS, "formats": formats}
    if len(rows) < 2 * FOLDS or y.min() == y.max():
        few = f"Too few images of both classes ({len(rows)}) to fit the metadata baseline."
        return out | {"auroc": math.nan, "auroc_ci95": None, "shortcut": False, "finding": few}
    fold_of = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)) % FOLDS
    scores = torch.empty(len(rows))
    for k in range(FOLDS):
        train, test = fold_of != k, fold_of == k
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        model = _fit_logistic((x[train] - mean) / std, y[train])
        with torch.no_grad():
            scores[test] = model((x[test] - mean) / std).squeeze(1)  # logits: never tie at 1.0
    auroc = ranking(scores, y)["auroc"]
    ci = bootstrap_intervals(scores, y, ["auroc"], n_bootstrap, seed)["auroc"] if n_bootstrap else None
    shortcut = bool(auroc > SHORTCUT_AUROC)
    said = finding(auroc, ci, formats)
    return out | {"auroc": auroc, "auroc_ci95": ci, "shortcut": shortcut, "finding": said}


def finding(auroc: float, ci: Sequence[float] | None, formats: dict[str, dict[str, int]]) -> str:
    """The baseline's result in one sentence a user can act on."""
    interval = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    kinds = "; ".join(f"{name}: {', '.join(f'{n} {fmt}' for fmt, n in sorted(c.items()))}"
                      for name, c in formats.items())  # fmt: skip
    if auroc <= SHORTCUT_AUROC:
        return f"File metadata alone scores AUROC {auroc:.3f}{interval} ({kinds}): no shortcut found."
    return (
        f"FORMAT/METADATA SHORTCUT: file metadata alone (format, size, JPEG tables, EXIF, image size) tells "
        f"real from fake with AUROC {auroc:.3f}{interval} ({kinds}): {FIX}"
    )
