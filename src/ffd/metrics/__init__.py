"""Metric collections shared by training and evaluation."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC


def classification_metrics() -> MetricCollection:
    """Accuracy (at p_fake >= 0.5) and AUROC, fed with (p_fake, label) pairs."""
    return MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC()})
