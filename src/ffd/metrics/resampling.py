"""Bootstrap confidence intervals, every resample scored at once.

A resample is a weight per image (how many times it was drawn), so B resamples are a (B, n) weight
matrix, and each score is a weighted sum over the images sorted once by score: the ROC curve of
every resample is two cumulative sums (``ffd.metrics.roc``), and AUROC, AP, EER, TPR at a
false-positive rate, accuracy and ECE follow from them as torchmetrics computes them on the
resampled images (distinct scores as thresholds, ties together). That makes 1,000 resamples of every
score cost about what a few dozen cost one by one, so every interval ffd reports can use the same
number of resamples.

Resamples that miss a class are redrawn (a score needs both); with a single class in the data
there is nothing to resample and every interval is NaN. ``groups`` resamples whole groups (the
frames of a video) instead of images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ffd.metrics.calibration import ECE_BINS
from ffd.metrics.roc import RANKED, ranked_scores

CHUNK = 256  # resamples drawn and scored at a time (bounds memory: CHUNK x n weights)


def resample_weights(
    labels: torch.Tensor, n: int, seed: int, groups: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Weights (<= CHUNK, len(labels)) of ``n`` resamples with both classes, drawn as a loop drawing one
    index vector at a time would draw them (the same generator stream)."""
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        members = torch.arange(len(labels))
    else:
        _, members = torch.unique(groups, return_inverse=True)  # each image's group, 0..G-1
    size = int(members.max()) + 1
    chunks, drawn = [], 0
    while drawn < n:
        picks = torch.randint(size, (CHUNK, size), generator=g)
        counts = torch.zeros(CHUNK, size, dtype=torch.float64).scatter_add_(
            1, picks, torch.ones(CHUNK, size, dtype=torch.float64)
        )
        weights = counts[:, members]  # an image weighs as many times as its group (itself) was drawn
        fake = (weights * labels.double()).sum(1)
        both = (fake > 0) & (fake < weights.sum(1))
        keep = weights[both][: n - drawn]
        chunks.append(keep)
        drawn += len(keep)
    return chunks


def _ece(probs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """torchmetrics' binary ECE (15 equal-width bins, L1) of each resample: sum over bins of
    |weighted sum of (label - p)| over the total weight."""
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=probs.dtype)  # binned in the scores' own precision
    bins = torch.bucketize(probs, edges, right=True) - 1
    one_hot = torch.nn.functional.one_hot(bins, ECE_BINS + 1).double()
    return ((w * (labels.double() - probs.double())) @ one_hot).abs().sum(1) / w.sum(1)


def bootstrap_intervals(
    scores: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    n: int,
    seed: int,
    accuracy_at: Mapping[str, float] | None = None,
    groups: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of ``names`` (of RANKED, and ``ece``) and of the accuracy at each
    threshold of ``accuracy_at`` (name -> threshold on ``scores``), all over the same ``n`` resamples.

    Args:
        scores: What ranks the images (logits, or p_fake).
        groups: An index per image (its video): resamples draw whole groups.
        probs: p_fake, for ``ece`` (None: ``scores`` are probabilities).
    """
    every = [*names, *(accuracy_at or {})]
    nan = (float("nan"), float("nan"))
    if labels.min() == labels.max() or not n:
        return dict.fromkeys(every, nan)
    values: dict[str, list[torch.Tensor]] = {k: [] for k in every}
    y = labels.double()
    for w in resample_weights(labels, n, seed, groups):
        ranked = ranked_scores(scores, labels, w) if set(names) & set(RANKED) else {}
        for name in names:
            values[name].append(
                _ece(scores if probs is None else probs, labels, w) if name == "ece" else ranked[name]
            )
        for name, threshold in (accuracy_at or {}).items():
            right = ((scores >= threshold).double() == y).double()
            values[name].append((w * right).sum(1) / w.sum(1))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    out = {}
    for name, chunks in values.items():
        lo, hi = torch.quantile(torch.cat(chunks), q).tolist()
        out[name] = (lo, hi)
    return out
