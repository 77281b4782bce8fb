"""Scores of a binary real/fake classifier from (p_fake, label) pairs.

Every function takes 1-D float ``probs`` (p_fake) and 0/1 ``labels`` (1 = fake,
the positive class) and returns plain Python numbers, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)

from ffd.rules import THRESHOLD_METHODS

# Operating points reported beside AUROC: TPR (fakes caught) at these false-positive rates.
OPERATING_FPRS = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05, "tpr_at_fpr_10": 0.10}


def classification_metrics() -> MetricCollection:
    """Accuracy (at p_fake >= 0.5) and AUROC, fed with (p_fake, label) pairs: cloned per split in training."""
    return MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC()})


def _both_classes(labels: torch.Tensor) -> bool:
    return bool(labels.min() != labels.max())


def eer(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Equal error rate and the threshold where it is reached.

    The EER is the operating point where the false-positive rate (reals called
    fake) equals the false-negative rate (fakes called real). On a finite set the
    two rates cross between ROC points: the EER is that crossing, interpolated
    linearly along the ROC curve; the threshold is that of the ROC point nearer
    the crossing (a threshold can only reach ROC points).
    """
    fpr, tpr, thresholds = (t.double() for t in binary_roc(probs, labels.long()))
    gap = fpr - (1 - tpr)  # FPR - FNR: rises from -1 to 1 along the curve
    j = int(torch.nonzero(gap >= 0)[0])
    if j == 0 or gap[j] == 0:
        return float(fpr[j]), float(thresholds[j].clamp(0, 1))
    w = float(-gap[j - 1] / (gap[j] - gap[j - 1]))  # where the crossing lies between points j-1 and j
    rate = (1 - w) * fpr[j - 1] + w * fpr[j]
    return float(rate), float(thresholds[j if w >= 0.5 else j - 1].clamp(0, 1))


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, method: str) -> float:
    """Decision threshold on p_fake: the EER point, or the point maximising Youden's J = TPR - FPR."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}.")
    if not _both_classes(labels):
        return 0.5
    if method == "eer":
        return eer(probs, labels)[1]
    fpr, tpr, thresholds = binary_roc(probs, labels.long())
    return float(thresholds[int(torch.argmax(tpr - fpr))].clamp(0, 1))


def at_threshold(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float | list]:
    """Threshold-dependent scores: accuracy, balanced accuracy, precision/recall/F1 for fake, confusion.

    An image is called fake when ``p_fake >= threshold``: the ROC convention, so a
    threshold taken from the ROC curve reproduces that curve's operating point.
    """
    called, fake = probs >= threshold, labels == 1
    tp, fp = int((called & fake).sum()), int((called & ~fake).sum())
    fn, tn = int((~called & fake).sum()), int((~called & ~fake).sum())
    nan = float("nan")
    recall = tp / (tp + fn) if tp + fn else nan  # no fakes: undefined
    specificity = tn / (tn + fp) if tn + fp else nan  # no reals: undefined
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        "threshold": float(threshold),
        "acc": (tp + tn) / max(tp + tn + fp + fn, 1),
        "balanced_acc": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "confusion": [[tn, fp], [fn, tp]],  # rows: true real, true fake; columns: called real, fake
    }


def tpr_at_fpr(probs: torch.Tensor, labels: torch.Tensor, fpr: float) -> float:
    """The share of fakes caught at the lowest threshold whose false-positive rate is <= ``fpr``.

    No interpolation: a threshold reaches only ROC points, so this is what a deployment at
    that threshold gets on this data (a conservative figure on small sets).
    """
    roc_fpr, roc_tpr, _ = binary_roc(probs, labels.long())
    return float(roc_tpr[roc_fpr <= fpr + 1e-12].max())


def _tpr(probs: torch.Tensor, labels: torch.Tensor, fpr: float) -> float:
    return tpr_at_fpr(probs, labels, fpr)


def ranking(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Threshold-free scores: AUROC, average precision, EER and TPR at 1/5/10 % FPR (NaN when a
    class is missing)."""
    if not _both_classes(labels):
        return dict.fromkeys(RANKING_SCORES, float("nan"))
    return {name: score(probs, labels) for name, score in RANKING_SCORES.items()}


RANKING_SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "auroc": lambda p, y: float(binary_auroc(p, y.long())),
    "ap": lambda p, y: float(binary_average_precision(p, y.long())),
    "eer": lambda p, y: eer(p, y)[0],
    **{name: partial(_tpr, fpr=f) for name, f in OPERATING_FPRS.items()},
}
