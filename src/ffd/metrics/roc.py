"""ROC curves of real-valued scores, for one set of images or for many weightings of it at once.

Scores may be p_fake or logits (log-odds of fake): every figure here depends only on their order, so
logits, which never saturate, rank images that float probabilities would tie at exactly 0 or 1.
torchmetrics would squash scores outside [0, 1] through a sigmoid first (and tie them again): these
are the same computations as torchmetrics' on probabilities (distinct scores as thresholds, ties
together, linear interpolation of the EER) on any scale, and with weights per image, so that the
bootstrap scores all its resamples at once (``ffd.metrics.resampling``).
"""

from __future__ import annotations

import torch

# Operating points reported beside AUROC: TPR (fakes caught) at these false-positive rates.
OPERATING_FPRS = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05, "tpr_at_fpr_10": 0.10}
RANKED = ("auroc", "ap", "eer", *OPERATING_FPRS)  # the scores of the ROC and PR curves


def roc_counts(
    scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weight of fakes (true positives) and of reals (false positives) scoring at or above each
    distinct score, from the highest, for each row of ``weights`` (B, n): (B, K + 1) each, the first
    column the (0, 0) point; and the K + 1 thresholds (+inf first)."""
    order = torch.argsort(scores, descending=True)
    s, y, w = scores[order], labels[order].double(), weights[:, order]
    last = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1])])  # ends of ties
    zero = torch.zeros(len(w), 1, dtype=torch.float64)
    tp = torch.cat([zero, (w * y).cumsum(1)[:, last]], 1)
    fp = torch.cat([zero, (w * (1 - y)).cumsum(1)[:, last]], 1)
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), s[last].double()])
    return tp, fp, thresholds


def eer_crossing(fpr: torch.Tensor, tpr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where FPR = FNR along each ROC curve (B, K + 1): the rate there, interpolated linearly between the
    two ROC points around the crossing; the index of the point after it; the crossing's share of the
    way to that point (1: at the point)."""
    gap = fpr - (1 - tpr)  # FPR - FNR: rises from -1 to 1 along the curve
    j = (gap >= 0).double().argmax(1, keepdim=True)
    before = (j - 1).clamp_min(0)
    g0, g1 = gap.gather(1, before), gap.gather(1, j)
    at_point = (j == 0) | (g1 == 0)
    share = torch.where(at_point, 1.0, -g0 / torch.where(at_point, 1.0, g1 - g0))
    rate = (1 - share) * fpr.gather(1, before) + share * fpr.gather(1, j)
    return rate[:, 0], j[:, 0], share[:, 0]


def ranked_scores(
    scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """AUROC, average precision, EER and TPR at each OPERATING_FPRS rate, one per row of ``weights``."""
    tp, fp, _ = roc_counts(scores, labels, weights)
    tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    out = {"auroc": ((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(1)}
    # AP: each recall step times the precision where it is taken (a threshold of weight 0 adds no step)
    precision = torch.nan_to_num(tp / (tp + fp))
    out["ap"] = ((tpr[:, 1:] - tpr[:, :-1]) * precision[:, 1:]).sum(1)
    out["eer"] = eer_crossing(fpr, tpr)[0]
    for name, rate in OPERATING_FPRS.items():
        out[name] = tpr.masked_fill(fpr > rate + 1e-12, float("-inf")).amax(1)
    return out
