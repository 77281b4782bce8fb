"""Scores of video data sets: frame level and video level, with intervals resampled over videos.

The frames of one video are not independent samples: they share a face, a background
and a manipulation. A bootstrap that resamples frames treats 32 near-copies as 32
samples and gives intervals far too narrow, so every interval here resamples whole
videos (with all their frames). A video's score aggregates its frames' p_fake: the mean
by default (DeepfakeBench's video-level AUC), or the median or the max; it is kept as a logit
(the log-odds of that p_fake, in float64), so videos rank and are called as frames are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ffd import rules
from ffd.data.facts import FAKE, REAL
from ffd.data.records import Record
from ffd.metrics.figures import Figure, plt
from ffd.metrics.resampling import RANKED, bootstrap_intervals
from ffd.metrics.scores import at_threshold, ranking

# Frame logits -> the video's logit. The median and the max of p_fake are those of the logits.
AGGREGATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda logit: torch.logit(torch.sigmoid(logit.double()).mean()),
    "median": lambda logit: logit.double().median(),  # the lower middle value for an even count
    "max": lambda logit: logit.double().max(),
}
assert tuple(AGGREGATES) == rules.AGGREGATES


def video_index(records: Sequence[Record]) -> tuple[list[str], torch.Tensor]:
    """The videos in first-seen order and, per record, the index of its video."""
    order: dict[str, int] = {}
    index = [order.setdefault(r.video, len(order)) for r in records]
    return list(order), torch.tensor(index)


def aggregate(logits: torch.Tensor, index: torch.Tensor, n_videos: int, how: str) -> torch.Tensor:
    """Each video's logit: ``how`` (a key of AGGREGATES) over its frames' p_fake, as a logit."""
    rules.check("video_aggregate", how)
    return torch.stack([AGGREGATES[how](logits[index == v]) for v in range(n_videos)])


def _level(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, threshold: float, n_boot: int,
           seed: int) -> dict[str, Any]:  # fmt: skip
    """Ranking scores and accuracy at the threshold, each with its video-resampled interval."""
    called = at_threshold(logits, labels, threshold)
    out: dict[str, Any] = {
        "n": len(labels), "n_real": int((labels == REAL).sum()), "n_fake": int((labels == FAKE).sum()),
        **ranking(logits, labels), "acc": called["acc"], "balanced_acc": called["balanced_acc"],
    }  # fmt: skip
    if n_boot and out["n_real"] and out["n_fake"]:
        cis = bootstrap_intervals(logits, labels, RANKED, n_boot, seed, {"acc": threshold}, groups)
        out |= {f"{k}_ci95": v for k, v in cis.items()}
    return out


def video_report(
    records: Sequence[Record], logits: torch.Tensor, threshold: float, how: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """Frame- and video-level scores of the records that came from videos, and a breakdown by method.

    Args:
        records: The scored rows (those with ``video`` set count).
        logits: Their logits of fake, in the same order.
        threshold: The model's decision threshold, a logit (a video is called fake when its logit
            reaches it).
        how: How a video's frames are aggregated (mean, median or max).
        n_boot: Bootstrap resamples (of videos) for the 95 % intervals; 0 = none.
        seed: Their seed.

    Returns:
        ``{"aggregate", "n_videos", "frames_per_video", "frame": {...}, "video": {...}, "by_method": {...}}``;
        each level holds AUROC, AP, EER, TPR at 1/5/10 % FPR and accuracy, with ``*_ci95``.
    """
    keep = [i for i, r in enumerate(records) if r.video]
    rows = [records[i] for i in keep]
    p, y = logits[keep], torch.tensor([r.label for r in rows])
    videos, index = video_index(rows)
    video_logit = aggregate(p, index, len(videos), how)
    first = {v: r for r, v in zip(rows, index.tolist(), strict=True)}
    video_y = torch.tensor([first[v].label for v in range(len(videos))])
    counts = torch.bincount(index, minlength=len(videos))
    report: dict[str, Any] = {
        "aggregate": how,
        "n_videos": len(videos),
        "frames_per_video": {
            "min": int(counts.min()),
            "mean": float(counts.float().mean()),
            "max": int(counts.max()),
        },
        "frame": _level(p, y, index, threshold, n_boot, seed),
        "video": _level(video_logit, video_y, torch.arange(len(videos)), threshold, n_boot, seed),
    }
    methods = sorted({first[v].method for v in range(len(videos)) if first[v].label == FAKE})
    report["by_method"] = {}
    for method in methods:
        frames = torch.tensor([r.label == REAL or r.method == method for r in rows])
        vids = torch.tensor([first[v].label == REAL or first[v].method == method for v in range(len(videos))])
        report["by_method"][method or "(none)"] = {
            "n_fake_videos": int((vids & (video_y == FAKE)).sum()),
            "frame_auroc": ranking(p[frames], y[frames])["auroc"],
            "video_auroc": ranking(video_logit[vids], video_y[vids])["auroc"],
            "video_recall": float((video_logit[vids & (video_y == FAKE)] >= threshold).float().mean()),
        }
    report["videos"] = [
        {"video": name, "label": first[v].label, "method": first[v].method, "frames": int(counts[v]),
         "logit": float(video_logit[v]), "p_fake": float(torch.sigmoid(video_logit[v]))}
        for v, name in enumerate(videos)
    ]  # fmt: skip
    return report


def timeline_figure(
    scored: Sequence[tuple[int, float]],
    missing: Sequence[int],
    threshold: float,
    score: float | None,
    title: str,
) -> Figure:
    """p_fake per frame of one video, the decision threshold, the video's score, and the frames without
    a face (grey ticks)."""
    fig, ax = plt.subplots(figsize=(8, 3))
    if scored:
        frames, probs = zip(*scored, strict=True)
        ax.plot(frames, probs, marker="o", markersize=3, label="p_fake per frame")
    ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
    if score is not None:
        ax.axhline(score, color="tab:green", linestyle=":", label=f"video score {score:.3g}")
    for i, frame in enumerate(missing):
        ax.axvline(frame, color="0.8", linewidth=1, label="no face" if i == 0 else None)
    ax.set(title=title, xlabel="frame", ylabel="p_fake", ylim=(-0.02, 1.02))
    ax.legend(loc="upper right", fontsize="small")
    return fig
