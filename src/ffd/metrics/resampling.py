"""Bootstrap confidence intervals, every resample scored at once.

A resample is a weight per image (how many times it was drawn), so B resamples are a (B, n) weight
matrix, and each score is a weighted sum over the images sorted once by p_fake: the ROC curve of
every resample is two cumulative sums, and AUROC, AP, EER, TPR at a false-positive rate, accuracy
and ECE follow from them as torchmetrics computes them on the resampled images (distinct scores as
thresholds, ties together). That makes 1,000 resamples of every score cost about what a few dozen
cost one by one, so every interval ffd reports can use the same number of resamples.

Resamples that miss a class are redrawn (a score needs both); with a single class in the data
there is nothing to resample and every interval is NaN. ``groups`` resamples whole groups (the
frames of a video) instead of images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ffd.metrics.calibration import ECE_BINS
from ffd.metrics.scores import OPERATING_FPRS

RANKED = ("auroc", "ap", "eer", *OPERATING_FPRS)  # the scores of the ROC and PR curves
CHUNK = 256  # resamples drawn and scored at a time (bounds memory: CHUNK x n weights)


def _draws(labels: torch.Tensor, n: int, seed: int, groups: torch.Tensor | None) -> list[torch.Tensor]:
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


def _counts(probs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each resample's weight of fakes (true positives) and of reals (false positives) scoring at or
    above each distinct p_fake, from the highest; (B, K + 1), the first column the (0, 0) point."""
    order = torch.argsort(probs, descending=True)
    p, y, w = probs[order], labels[order].double(), w[:, order]
    last = torch.cat([torch.nonzero(p[1:] != p[:-1]).flatten(), torch.tensor([len(p) - 1])])  # ends of ties
    zero = torch.zeros(len(w), 1, dtype=torch.float64)
    tp = torch.cat([zero, (w * y).cumsum(1)[:, last]], 1)
    fp = torch.cat([zero, (w * (1 - y)).cumsum(1)[:, last]], 1)
    return tp, fp


def _ranked(probs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fp = _counts(probs, labels, w)
    tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    out = {"auroc": ((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(1)}
    # AP: each recall step times the precision where it is taken (a threshold of weight 0 adds no step)
    precision = torch.nan_to_num(tp / (tp + fp))
    out["ap"] = ((tpr[:, 1:] - tpr[:, :-1]) * precision[:, 1:]).sum(1)
    # EER: where FPR = FNR, interpolated between the ROC points around the crossing (ffd.metrics.scores.eer)
    gap = fpr - (1 - tpr)
    j = (gap >= 0).double().argmax(1, keepdim=True)
    before = (j - 1).clamp_min(0)
    g0, g1 = gap.gather(1, before), gap.gather(1, j)
    at_point = (j == 0) | (g1 == 0)
    share = torch.where(at_point, 1.0, -g0 / torch.where(at_point, 1.0, g1 - g0))
    out["eer"] = ((1 - share) * fpr.gather(1, before) + share * fpr.gather(1, j))[:, 0]
    for name, rate in OPERATING_FPRS.items():
        out[name] = tpr.masked_fill(fpr > rate + 1e-12, float("-inf")).amax(1)
    return out


def _ece(probs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """torchmetrics' binary ECE (15 equal-width bins, L1) of each resample: sum over bins of
    |weighted sum of (label - p)| over the total weight."""
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=probs.dtype)  # binned in the scores' own precision
    bins = torch.bucketize(probs, edges, right=True) - 1
    one_hot = torch.nn.functional.one_hot(bins, ECE_BINS + 1).double()
    return ((w * (labels.double() - probs.double())) @ one_hot).abs().sum(1) / w.sum(1)


def bootstrap_intervals(
    probs: torch.Tensor,
    labels: torch.Tensor,
    scores: Sequence[str],
    n: int,
    seed: int,
    accuracy_at: Mapping[str, float] | None = None,
    groups: torch.Tensor | None = None,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of ``scores`` (names of RANKED, and ``ece``) and of the accuracy
    at each threshold of ``accuracy_at`` (name -> threshold), all over the same ``n`` resamples.

    Args:
        groups: An index per image (its video): resamples draw whole groups.
    """
    names = [*scores, *(accuracy_at or {})]
    nan = (float("nan"), float("nan"))
    if labels.min() == labels.max() or not n:
        return dict.fromkeys(names, nan)
    values: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    y = labels.double()
    for w in _draws(labels, n, seed, groups):
        ranked = _ranked(probs, labels, w) if set(scores) & set(RANKED) else {}
        for name in scores:
            values[name].append(_ece(probs, labels, w) if name == "ece" else ranked[name])
        for name, threshold in (accuracy_at or {}).items():
            right = ((probs >= threshold).double() == y).double()
            values[name].append((w * right).sum(1) / w.sum(1))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    out = {}
    for name, chunks in values.items():
        lo, hi = torch.quantile(torch.cat(chunks), q).tolist()
        out[name] = (lo, hi)
    return out
