"""Scores of a binary real/fake classifier from (score, label) pairs.

Every function takes 1-D float ``scores`` and 0/1 ``labels`` (1 = fake, the positive class) and
returns plain Python numbers, ready for JSON. ffd's scores are logits (log-odds of fake): the ranking
scores (AUROC, AP, EER, TPR at a false-positive rate) depend only on the order, and logits never
saturate where float probabilities of a confident model tie at exactly 0 or 1. Thresholds are on
the scores' own scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.utilities import dim_zero_cat

from ffd.metrics.roc import OPERATING_FPRS, RANKED, eer_crossing, ranked_scores, roc_counts
from ffd.rules import THRESHOLD_METHODS

__all__ = ["OPERATING_FPRS", "RANKED"]


class RankAUROC(Metric):
    """AUROC of any real-valued scores (torchmetrics' BinaryAUROC squashes scores outside [0, 1] through
    a sigmoid, which ties large logits again); accumulated over an epoch, across ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    scores: list[torch.Tensor]
    labels: list[torch.Tensor]

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().double())
        self.labels.append(labels.detach())

    def compute(self) -> torch.Tensor:
        scores, labels = dim_zero_cat(self.scores), dim_zero_cat(self.labels)
        return torch.tensor(ranking(scores.cpu(), labels.cpu())["auroc"])


class LogitAccuracy(BinaryAccuracy):
    """Accuracy of logits (log-odds of fake) at 0, i.e. p_fake >= 0.5. BinaryAccuracy alone would take
    a batch whose logits all lie in [0, 1] for probabilities and threshold them at 0.5."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        super().update((logits >= 0).long(), labels)


def classification_metrics() -> MetricCollection:
    """Accuracy (at logit >= 0, i.e. p_fake >= 0.5) and AUROC, fed with (logit, label) pairs: cloned
    per split in training."""
    return MetricCollection({"acc": LogitAccuracy(), "auroc": RankAUROC()}, compute_groups=False)


def _both_classes(labels: torch.Tensor) -> bool:
    return bool(labels.min() != labels.max())


def _roc(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tp, fp, thresholds = roc_counts(scores, labels, torch.ones(1, len(labels), dtype=torch.float64))
    return fp[0] / fp[0, -1], tp[0] / tp[0, -1], thresholds


def eer(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Equal error rate and the threshold where it is reached.

    The EER is the operating point where the false-positive rate (reals called
    fake) equals the false-negative rate (fakes called real). On a finite set the
    two rates cross between ROC points: the EER is that crossing, interpolated
    linearly along the ROC curve; the threshold is that of the ROC point nearer
    the crossing (a threshold can only reach ROC points).
    """
    fpr, tpr, thresholds = _roc(scores, labels)
    rate, after, share = eer_crossing(fpr[None], tpr[None])
    j = int(after[0])
    return float(rate[0]), float(thresholds[j if share[0] >= 0.5 else j - 1])


def choose_threshold(scores: torch.Tensor, labels: torch.Tensor, method: str) -> float:
    """Decision threshold on the scores (``score >= threshold`` is fake): the EER point, or the point
    maximising Youden's J = TPR - FPR. Without both classes: 0 (p_fake 0.5 on logits)."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}.")
    if not _both_classes(labels):
        return 0.0
    if method == "eer":
        return eer(scores, labels)[1]
    fpr, tpr, thresholds = _roc(scores, labels)
    return float(thresholds[max(1, int(torch.argmax(tpr - fpr)))])  # not +inf: at least the top score


def at_threshold(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float | list]:
    """Threshold-dependent scores: accuracy, balanced accuracy, precision/recall/F1 for fake, confusion.

    An image is called fake when ``score >= threshold``: the ROC convention, so a
    threshold taken from the ROC curve reproduces that curve's operating point.
    """
    called, fake = scores >= threshold, labels == 1
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


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float) -> float:
    """The share of fakes caught at the lowest threshold whose false-positive rate is <= ``fpr``.

    No interpolation: a threshold reaches only ROC points, so this is what a deployment at
    that threshold gets on this data (a conservative figure on small sets).
    """
    roc_fpr, roc_tpr, _ = _roc(scores, labels)
    return float(roc_tpr[roc_fpr <= fpr + 1e-12].max())


def ranking(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Threshold-free scores: AUROC, average precision, EER and TPR at 1/5/10 % FPR (NaN when a
    class is missing)."""
    if not _both_classes(labels):
        return dict.fromkeys(RANKED, float("nan"))
    ranked = ranked_scores(scores, labels, torch.ones(1, len(labels), dtype=torch.float64))
    return {name: float(ranked[name][0]) for name in RANKED}


Score = Callable[[torch.Tensor, torch.Tensor], float]
