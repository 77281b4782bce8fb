"""An "uncertain" answer: a band of logits around the threshold where the model abstains.

Forensic analysts send borderline images to a person. ``model.abstain`` chooses, on the validation
split, the narrowest band of logits around the decision threshold such that the images outside it
(the answered ones) meet a target: an error rate among the answered (``risk``), or a share answered
(``coverage``). Inside the band predict, the service and the page answer ``uncertain``; eval reports
the coverage and the selective risk (the error rate among the answered) with bootstrap intervals,
and the risk-coverage curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ffd.data.facts import p_fake
from ffd.errors import ConfigError
from ffd.metrics.resampling import resample_weights

TARGETS = ("risk", "coverage")


def check_abstain(setting: Mapping[str, Any] | None) -> None:
    """``model.abstain``: null, ``{risk: R}`` or ``{coverage: C}`` with R, C in (0, 1)."""
    if setting is None:
        return
    if (
        not isinstance(setting, Mapping)
        or len(setting) != 1
        or next(iter(setting)) not in TARGETS
        or not isinstance(value := next(iter(setting.values())), int | float)
        or not 0 < value < 1
    ):
        raise ConfigError(
            f"model.abstain={dict(setting) if isinstance(setting, Mapping) else setting!r}: give null "
            "(always answer), {risk: 0.05} (the narrowest band with at most 5 % errors among the "
            "answered) or {coverage: 0.9} (answer 90 % of images), the number between 0 and 1."
        )


def choose_band(
    logits: torch.Tensor, labels: torch.Tensor, threshold: float, target: Mapping[str, float]
) -> dict[str, Any]:
    """The band ``(low, high)`` of logits (``threshold -+ width``) that meets ``target`` on these
    images, as wide as it must be and no wider.

    An image is answered when ``|logit - threshold| >= width``. ``risk``: the smallest width whose
    answered images have at most that error rate (when none does, the band takes every image: the
    model then always abstains, and ``met`` is False); ``coverage``: the largest width that still
    answers at least that share.
    """
    ((kind, value),) = target.items()
    distance = (logits.double() - threshold).abs()
    wrong = (logits >= threshold).long() != labels
    order = torch.argsort(distance, descending=True)  # most confident first
    d, w = distance[order], wrong[order].double()
    n = len(d)
    answered = torch.arange(1, n + 1, dtype=torch.float64)
    risk = w.cumsum(0) / answered  # answering the k most confident
    if kind == "coverage":
        k = max(1, math.ceil(value * n))
        met = True
    else:
        ok = torch.nonzero(risk <= value + 1e-12).flatten()
        met = bool(len(ok))
        k = int(ok.max()) + 1 if met else 0
    # Ties at the cut: every image at the k-th distance is answered (a band can't split them).
    width = float(d[k - 1]) if k else float(d[0]) + 1.0
    low, high = threshold - width, threshold + width
    return {
        "target": kind, "value": value, "met": met, "width": width, "low": low, "high": high,
        "low_p_fake": p_fake(low), "high_p_fake": p_fake(high),
    }  # fmt: skip


def answered(logits: torch.Tensor, band: Mapping[str, float]) -> torch.Tensor:
    """Which images the model answers: those outside the open band (low, high)."""
    return (logits <= band["low"]) | (logits >= band["high"])


def selective_scores(logits: torch.Tensor, labels: torch.Tensor, threshold: float, band: Mapping[str, float],
                     n_boot: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Coverage (share answered) and selective risk (errors among the answered), with bootstrap CIs."""
    ok = answered(logits, band).double()
    wrong = ((logits >= threshold).long() != labels).double()
    n_answered = float(ok.sum())
    out: dict[str, Any] = {
        "coverage": n_answered / len(labels),
        "selective_risk": float((ok * wrong).sum()) / n_answered if n_answered else math.nan,
        "risk_at_full_coverage": float(wrong.mean()),
        "answered": int(n_answered),
        "uncertain": len(labels) - int(n_answered),
    }
    if n_boot and labels.min() != labels.max():
        coverage: list[torch.Tensor] = []
        risk: list[torch.Tensor] = []
        for weights in resample_weights(labels, n_boot, seed):
            a = weights * ok
            coverage.append(a.sum(1) / weights.sum(1))
            risk.append((a * wrong).sum(1) / a.sum(1).clamp_min(1e-12))
        q = torch.tensor([0.025, 0.975], dtype=torch.float64)
        out["coverage_ci95"] = torch.quantile(torch.cat(coverage), q).tolist()
        out["selective_risk_ci95"] = torch.quantile(torch.cat(risk), q).tolist()
    return out


def risk_coverage(
    logits: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[list[float], list[float]]:
    """The risk-coverage curve: answering the k most confident images (farthest from the threshold),
    for every k, the share answered and the error rate among them."""
    distance = (logits.double() - threshold).abs()
    wrong = ((logits >= threshold).long() != labels)[torch.argsort(distance, descending=True)].double()
    k = torch.arange(1, len(wrong) + 1, dtype=torch.float64)
    return (k / len(wrong)).tolist(), (wrong.cumsum(0) / k).tolist()
