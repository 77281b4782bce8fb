"""Figures: training curves; ROC, precision-recall, confusion matrix, score histograms, reliability.

The one module that draws with matplotlib's pyplot (on the file-only Agg backend).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ffd.data.facts import CLASS_NAMES, p_fake  # noqa: E402
from ffd.metrics.roc import roc_counts  # noqa: E402
from ffd.metrics.selective import risk_coverage  # noqa: E402


def curves_figure(history: Mapping[str, Sequence[float]], metrics: Sequence[str]) -> Figure:
    """One panel per metric: its ``train/<name>`` and ``val/<name>`` values per epoch (the seed's graphs)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        for split in ("train", "val"):
            values = history.get(f"{split}/{name}", [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
        ax.set(title=name, xlabel="epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Any) -> None:
    """Write a figure to a PNG file and free it."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _curve(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(FPR, TPR, threshold) at each distinct logit, from the highest (``ffd.metrics.roc``)."""
    tp, fp, thresholds = roc_counts(logits, labels, torch.ones(1, len(labels), dtype=torch.float64))
    return fp[0] / fp[0, -1], tp[0] / tp[0, -1], thresholds


def roc_figure(logits: torch.Tensor, labels: torch.Tensor, threshold_logit: float) -> Figure:
    fpr, tpr, thresholds = _curve(logits, labels)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    i = int((thresholds >= threshold_logit).sum()) - 1  # the point the threshold reaches
    label = f"threshold {p_fake(threshold_logit):.3f}"
    ax.scatter([fpr[i]], [tpr[i]], c="red", zorder=3, label=label)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return fig


def pr_figure(logits: torch.Tensor, labels: torch.Tensor) -> Figure:
    tp, fp, _ = roc_counts(logits, labels, torch.ones(1, len(labels), dtype=torch.float64))
    recall, precision = tp[0, 1:] / tp[0, -1], tp[0, 1:] / (tp[0, 1:] + fp[0, 1:])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision)
    ax.axhline(float(labels.float().mean()), ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlabel="recall (fake)", ylabel="precision (fake)", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return fig


def confusion_figure(confusion: list[list[int]]) -> Figure:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in [((i, j), confusion[i][j]) for i in range(2) for j in range(2)]:
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return fig


def histogram_figure(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, name in enumerate(CLASS_NAMES):
        ax.hist(probs[labels == label].numpy(), bins=20, range=(0, 1), alpha=0.6, label=name)
    ax.axvline(threshold, c="red", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="p_fake", ylabel="images", title="Scores by true class")
    ax.legend()
    return fig


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Figure:
    """Mean predicted p_fake against the observed share of fakes, per probability bin."""
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(probs, edges[1:-1])
    mean_p, share = [], []
    for b in range(bins):
        m = which == b
        if m.any():
            mean_p.append(float(probs[m].mean()))
            share.append(float(labels[m].float().mean()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(mean_p, share, marker="o", label="model")
    ax.set(
        xlabel="mean p_fake in bin", ylabel="share of fakes", title="Reliability", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="upper left")
    return fig


def robustness_figure(family: str, rows: Sequence[Mapping[str, Any]], clean: Mapping[str, Any]) -> Figure:
    """AUROC and accuracy against severity for one perturbation family, 95 % CI bands, clean as lines."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = list(range(len(rows)))
    for key, colour in (("auroc", "C0"), ("acc", "C1")):
        ax.plot(
            x, [r[key] for r in rows], marker="o", c=colour, label=f"{key.upper() if key == 'auroc' else key}"
        )
        if all(f"{key}_ci95" in r for r in rows):
            ax.fill_between(x, [r[f"{key}_ci95"][0] for r in rows], [r[f"{key}_ci95"][1] for r in rows],
                            color=colour, alpha=0.2, lw=0)  # fmt: skip
        ax.axhline(clean[key], c=colour, ls="--", lw=0.8)
    ax.plot(x, [r["flip_rate"] for r in rows], marker="x", c="C3", label="flipped labels")
    ax.set_xticks(x, [str(r["severity"]) for r in rows], rotation=20 if len(rows) > 4 else 0)
    ax.set(title=f"{family} (dashed: clean)", xlabel="severity", ylim=(-0.02, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def matrix_figure(values: Sequence[Sequence[float]], rows: Sequence[str], columns: Sequence[str]) -> Figure:
    """A train x test heatmap of AUROC, each cell labelled."""
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 0.7 * len(rows) + 1.8))
    image = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", c="white" if v < 0.8 else "black")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="tested on", ylabel="trained on", title="Test AUROC")
    fig.colorbar(image, ax=ax)
    return fig


def leave_one_out_figure(
    names: Sequence[str], seen: Sequence[Mapping[str, Any]], unseen: Sequence[Mapping[str, Any]]
) -> Figure:
    """Seen and unseen AUROC of each held-out model, side by side, with their 95 % CIs."""
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 3.8))
    x = torch.arange(len(names), dtype=torch.float64)
    for offset, label, scores in ((-0.2, "seen", seen), (0.2, "unseen (held out)", unseen)):
        values = [s["auroc"] for s in scores]
        cis = [s.get("auroc_ci95") or (v, v) for s, v in zip(scores, values, strict=True)]
        errors = [[v - lo for v, (lo, _) in zip(values, cis, strict=True)],
                  [hi - v for v, (_, hi) in zip(values, cis, strict=True)]]  # fmt: skip
        ax.bar((x + offset).tolist(), values, width=0.4, yerr=errors, capsize=3, label=label)
    ax.axhline(0.5, c="grey", ls="--", lw=0.8)
    ax.set_xticks(x.tolist(), [n.split("/")[-1] for n in names], rotation=20 if len(names) > 4 else 0)
    ax.set(ylabel="test AUROC", xlabel="held out", ylim=(0, 1.02), title="Leave one out")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def risk_coverage_figure(
    coverage: Sequence[float], risk: Sequence[float], chosen: Mapping[str, Any]
) -> Figure:
    """The error rate among the answered images against the share answered, and the band's point."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(coverage, risk, label="answering the most confident first")
    ax.scatter([chosen["coverage"]], [chosen["selective_risk"]], c="red", zorder=3,
               label=f"model.abstain: {chosen['target']} {chosen['value']:g}")  # fmt: skip
    top = max(0.05, max(risk, default=0) * 1.1)
    ax.set(xlabel="coverage (share answered)", ylabel="risk (errors among the answered)",
           title="Risk-coverage", xlim=(0, 1.02), ylim=(0, top))  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    return fig


def all_figures(logits: torch.Tensor, labels: torch.Tensor, report: dict[str, Any]) -> dict[str, Figure]:
    """Every figure of the logits of fake, by file stem (curves only when both classes are present)."""
    chosen = report["at_chosen_threshold"]
    probs = torch.sigmoid(logits.double()).float()
    figures = {
        "confusion": confusion_figure(chosen["confusion"]),
        "scores": histogram_figure(probs, labels, chosen["threshold"]),
    }
    if report["n_real"] and report["n_fake"]:
        figures |= {
            "roc": roc_figure(logits, labels, chosen["threshold_logit"]),
            "pr": pr_figure(logits, labels),
            "reliability": reliability_figure(probs, labels),
        }
    if abstain := report.get("abstain"):
        curve = risk_coverage(logits, labels, chosen["threshold_logit"])
        figures["risk_coverage"] = risk_coverage_figure(*curve, abstain)
    return figures
