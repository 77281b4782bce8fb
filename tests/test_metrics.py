"""Scores, threshold choice and breakdowns against hand-computed cases."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

from ffd.data.records import Record
from ffd.metrics.breakdowns import breakdowns
from ffd.metrics.calibration import TEMPERATURE_RANGE, brier, ece, fit_temperature
from ffd.metrics.report import build_report, summary_markdown
from ffd.metrics.resampling import RANKED, bootstrap_intervals
from ffd.metrics.scores import (
    OPERATING_FPRS,
    at_threshold,
    choose_threshold,
    classification_metrics,
    eer,
    ranking,
)


def _tm_eer(p: torch.Tensor, y: torch.Tensor) -> float:
    """The EER on torchmetrics' ROC curve, the crossing interpolated linearly."""
    fpr, tpr, _ = (t.double() for t in binary_roc(p, y.long()))
    gap = fpr - (1 - tpr)
    j = int(torch.nonzero(gap >= 0)[0])
    if j == 0 or gap[j] == 0:
        return float(fpr[j])
    w = float(-gap[j - 1] / (gap[j] - gap[j - 1]))
    return float((1 - w) * fpr[j - 1] + w * fpr[j])


def _tm_tpr(p: torch.Tensor, y: torch.Tensor, fpr: float) -> float:
    roc_fpr, roc_tpr, _ = binary_roc(p, y.long())
    return float(roc_tpr[roc_fpr <= fpr + 1e-12].max())


# The ranking scores as torchmetrics computes them on probabilities: the reference for ffd's own.
TORCHMETRICS = {
    "auroc": lambda p, y: float(binary_auroc(p, y.long())),
    "ap": lambda p, y: float(binary_average_precision(p, y.long())),
    "eer": _tm_eer,
    **{name: partial(_tm_tpr, fpr=f) for name, f in OPERATING_FPRS.items()},
}

# The classic 4-point example: ROC points (FPR, TPR) = (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
P = torch.tensor([0.1, 0.4, 0.35, 0.8])
Y = torch.tensor([0, 0, 1, 1])
LOGITS = torch.logit(P.double())  # what ffd scores: the same order


def test_ranking_scores() -> None:
    r = ranking(P, Y)
    assert r["auroc"] == pytest.approx(0.75)
    assert r["ap"] == pytest.approx(0.8333, abs=1e-4)  # (1 + 2/3) / 2
    assert r["eer"] == pytest.approx(0.5)  # FPR = FNR = 0.5 at threshold 0.4


def test_eer_and_threshold_choice() -> None:
    assert eer(P, Y) == pytest.approx((0.5, 0.4))
    assert choose_threshold(P, Y, "eer") == pytest.approx(0.4)
    assert choose_threshold(P, Y, "youden") == pytest.approx(0.8)  # J = .5 first reached at 0.8
    # 3 reals, 1 fake: ROC (0,0) (1/3,0) (1/3,1) (2/3,1) (1,1); FPR = FNR = 1/3 two thirds up the
    # vertical segment, whose upper point (threshold 0.5) is the nearer one.
    assert eer(torch.tensor([0.1, 0.2, 0.9, 0.5]), torch.tensor([0, 0, 0, 1])) == pytest.approx((1 / 3, 0.5))
    separable = torch.tensor([0.1, 0.2, 0.8, 0.9])
    assert eer(separable, Y) == pytest.approx((0.0, 0.8))
    assert choose_threshold(P, torch.zeros(4, dtype=torch.long), "eer") == 0.0  # one class: logit 0
    with pytest.raises(ValueError, match="threshold method"):
        choose_threshold(P, Y, "f1")


def test_scores_at_a_threshold() -> None:
    s = at_threshold(P, Y, 0.5)  # called fake: only 0.8
    assert s["confusion"] == [[2, 0], [1, 1]]
    assert s["acc"] == pytest.approx(0.75) and s["balanced_acc"] == pytest.approx(0.75)
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 / 3)
    s = at_threshold(P, Y, 0.3)  # 0.4, 0.35, 0.8 called fake
    assert (
        s["confusion"] == [[1, 1], [0, 2]] and s["recall"] == 1.0 and s["precision"] == pytest.approx(2 / 3)
    )


def test_missing_class_gives_nan_not_a_crash() -> None:
    r = ranking(P, torch.ones(4, dtype=torch.long))
    assert all(math.isnan(v) for v in r.values())


def test_bootstrap_interval() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (300,), generator=g)
    probs = (labels.float() * 0.3 + torch.rand(300, generator=g) * 0.7).clamp(0, 1)
    point = ranking(probs, labels)["auroc"]
    lo, hi = bootstrap_intervals(probs, labels, ["auroc"], n=300, seed=1)["auroc"]
    assert lo < point < hi and 0.02 < hi - lo < 0.2
    assert bootstrap_intervals(probs, labels, ["auroc"], n=300, seed=1)["auroc"] == (lo, hi)  # seeded
    lo_small, hi_small = bootstrap_intervals(probs[:40], labels[:40], ["auroc"], n=300, seed=1)["auroc"]
    assert hi_small - lo_small > hi - lo  # fewer images, wider interval
    one_class = bootstrap_intervals(probs, torch.ones(300, dtype=torch.long), ["auroc"], n=300, seed=1)
    assert all(math.isnan(v) for v in one_class["auroc"])


def one_by_one(probs, labels, n: int, seed: int, threshold: float, groups=None) -> dict[str, list[float]]:
    """The resamples scored one at a time with torchmetrics (a reference), drawn from the same stream."""
    g = torch.Generator().manual_seed(seed)
    members = [torch.arange(len(labels))] if groups is None else [torch.nonzero(groups == v).flatten()
                                                                  for v in torch.unique(groups)]  # fmt: skip
    scores = {
        **TORCHMETRICS,
        "ece": ece,
        "acc": lambda p, y: float(((p >= threshold).long() == y).float().mean()),
    }
    values: dict[str, list[float]] = {k: [] for k in scores}
    while len(values["acc"]) < n:
        if groups is None:
            idx = torch.randint(len(labels), (len(labels),), generator=g)
        else:
            idx = torch.cat(
                [members[int(i)] for i in torch.randint(len(members), (len(members),), generator=g)]
            )
        if labels[idx].min() == labels[idx].max():
            continue
        for k, score in scores.items():
            values[k].append(score(probs[idx], labels[idx]))
    return values


@pytest.mark.parametrize("grouped", [False, True])
def test_every_resample_scored_at_once_equals_one_by_one(grouped: bool) -> None:
    """The vectorized bootstrap gives the intervals of scoring each resample with torchmetrics, ties
    and all (scores rounded to 2 decimals), on the same resamples; whole groups with ``groups``."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (60,), generator=g)
    probs = (labels * 0.25 + torch.rand(60, generator=g) * 0.75).round(decimals=2)
    groups = torch.arange(60) // 4 if grouped else None
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    reference = {k: torch.quantile(torch.tensor(v, dtype=torch.float64), q).tolist()
                 for k, v in one_by_one(probs, labels, 200, 5, 0.4, groups).items()}  # fmt: skip
    fast = bootstrap_intervals(probs, labels, [*RANKED, "ece"], 200, 5, {"acc": 0.4}, groups)
    for name, (lo, hi) in reference.items():
        assert fast[name] == pytest.approx((lo, hi), abs=1e-6), name


def test_breakdowns_on_a_planted_case() -> None:
    records = [
        Record("/r1", 0, "ciplab"),
        Record("/r2", 0, "ciplab"),
        Record("/easy", 1, "ciplab", difficulty="easy", parts="1000"),
        Record("/hard", 1, "ciplab", difficulty="hard", parts="0001"),
    ]
    probs = torch.tensor([0.1, 0.2, 0.9, 0.15])
    b = breakdowns(records, probs, threshold=0.5)
    assert b["difficulty"]["easy"] == {"n_fake": 1, "auroc": 1.0, "recall": 1.0}
    assert b["difficulty"]["hard"] == {"n_fake": 1, "auroc": 0.5, "recall": 0.0}
    assert set(b["part"]) == {"left_eye", "mouth"} and b["part"]["mouth"]["auroc"] == 0.5
    assert b["num_parts"]["1"]["auroc"] == pytest.approx(0.75) and b["num_parts"]["1"]["n_fake"] == 2
    plain = [Record("/a", 0, "folders"), Record("/b", 1, "folders")]
    assert breakdowns(plain, torch.tensor([0.2, 0.7]), 0.5) == {}


def test_one_class_data_gives_nan_intervals_not_a_hang() -> None:
    fakes = torch.tensor([1, 1, 1, 1])
    report = build_report(LOGITS, fakes, threshold_logit=0.0, n_bootstrap=100, seed=0, temperature=1.0)
    assert math.isnan(report["auroc"]) and "auroc_ci95" not in report
    assert all(math.isnan(v) for v in report["at_0.5"]["acc_ci95"])
    assert report["at_0.5"]["recall"] == 0.25 and math.isnan(report["at_0.5"]["balanced_acc"])
    assert "nan" in summary_markdown(report)


def test_report_and_summary() -> None:
    report = build_report(
        LOGITS, Y, threshold_logit=float(LOGITS[1]), n_bootstrap=50, seed=0, temperature=2.0
    )
    assert report["n"] == 4 and report["at_0.5"]["acc"] == 0.75 and report["at_0.5"]["threshold"] == 0.5
    assert report["at_chosen_threshold"]["threshold"] == pytest.approx(0.4)
    assert report["at_chosen_threshold"]["confusion"] == [[1, 1], [1, 1]]  # 0.4 itself is called fake
    text = summary_markdown(report)
    assert "AUROC 0.750" in text and "0.400 (chosen on val)" in text


def test_temperature_scaling_undoes_overconfidence() -> None:
    """Logits 3x too large for the labels they were drawn from: the fitted temperature is ~3, and the
    calibration error drops; the report's ECE before scaling is that of the unscaled logits."""
    g = torch.Generator().manual_seed(0)
    margin = torch.randn(20000, generator=g) * 2
    labels = (torch.rand(20000, generator=g) < torch.sigmoid(margin)).long()
    logits = torch.stack([torch.zeros_like(margin), 3 * margin], 1)  # p_fake = sigmoid(3 x margin)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before, after = logits.softmax(-1)[:, 1], (logits / t).softmax(-1)[:, 1]
    assert ece(after, labels) < 0.02 < 0.1 < ece(before, labels)
    assert brier(after, labels) < brier(before, labels)
    calibrated = (logits[:, 1] - logits[:, 0]) / t
    report = build_report(calibrated, labels, 0.0, n_bootstrap=0, seed=0, temperature=t)
    assert report["calibration"]["ece"] == pytest.approx(ece(after, labels), abs=1e-6)
    assert report["calibration"]["ece_uncalibrated"] == pytest.approx(ece(before, labels), abs=1e-6)


def test_temperature_stays_finite_at_both_ends() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    separable = torch.tensor([[1.0, -1.0], [2.0, -2.0], [-1.0, 1.0], [-2.0, 2.0]])
    assert TEMPERATURE_RANGE[0] <= fit_temperature(separable, labels) < 0.2  # the NLL falls as T -> 0
    assert fit_temperature(separable.flip(0), labels) == pytest.approx(TEMPERATURE_RANGE[1])  # all wrong


def test_logits_rank_as_torchmetrics_ranks_their_probabilities() -> None:
    """On logits whose sigmoid doesn't saturate, every ranking score equals torchmetrics' on p_fake."""
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 2, (200,), generator=g)
    logits = (labels * 1.5 + torch.randn(200, generator=g) * 2).double()
    ours, probs = ranking(logits, labels), torch.sigmoid(logits)
    for name, score in TORCHMETRICS.items():
        assert ours[name] == pytest.approx(score(probs, labels), abs=1e-6), name  # torchmetrics: fp32


def test_an_overconfident_model_ties_in_probabilities_never_in_logits() -> None:
    """Logits in the tens: fp32 softmax gives p_fake exactly 1.0 to most images, and AUROC on those
    ties; on the logits (what ffd ranks) the order survives."""
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    logit = torch.tensor([20.0, 25.0, -30.0, 30.0, 35.0, 40.0])  # every fake above every real
    p = torch.stack([torch.zeros(6), logit], 1).softmax(-1)[:, 1]
    assert int((p == 1.0).sum()) == 5  # saturated
    assert TORCHMETRICS["auroc"](p, labels) < 0.9 < ranking(logit, labels)["auroc"] == 1.0
    metric = classification_metrics()
    metric.update(logit[:3], labels[:3])
    metric.update(logit[3:], labels[3:])
    assert metric.compute() == {"acc": pytest.approx(4 / 6), "auroc": 1.0}  # acc at logit 0: p_fake 0.5


def test_accuracy_of_logits_in_zero_to_one_is_at_zero() -> None:
    """A batch whose logits all lie in [0, 1] is logits still: all called fake (torchmetrics' own
    accuracy would take them for probabilities and call those under 0.5 real)."""
    metric = classification_metrics()
    metric.update(torch.tensor([0.1, 0.3, 0.9]), torch.tensor([1, 1, 1]))
    assert metric.compute()["acc"] == 1.0
