"""The evaluation report: every score with its confidence interval, as JSON and Markdown."""

from __future__ import annotations

from typing import Any

import torch

from ffd.data.facts import p_fake
from ffd.metrics.calibration import brier, ece
from ffd.metrics.resampling import RANKED, bootstrap_intervals
from ffd.metrics.scores import OPERATING_FPRS, at_threshold, ranking
from ffd.metrics.tables import markdown_table


def build_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold_logit: float,
    n_bootstrap: int,
    seed: int,
    temperature: float,
    groups: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Scores of the logits of fake: ranking, at p_fake 0.5 and at the checkpoint's validation-chosen
    threshold (``threshold`` as p_fake, ``threshold_logit`` as a logit), and calibration (ECE before
    and after the model's temperature scaling, Brier score), with 95 % CIs.

    ``groups`` (an index per image: its video) makes every interval resample whole groups:
    the frames of a video are not independent samples."""

    thresholds = {"at_0.5": 0.0, "at_chosen_threshold": threshold_logit}
    two_classes = bool(labels.min() != labels.max())
    probs = torch.sigmoid(logits.double()).float()  # p_fake, for calibration (torchmetrics' fp32 ECE)
    cis = bootstrap_intervals(logits, labels, [*RANKED, "ece"], n_bootstrap, seed, thresholds, groups, probs)
    report: dict[str, Any] = {
        "n": len(labels),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
        **ranking(logits, labels),
    }
    if two_classes and n_bootstrap:
        report |= {f"{k}_ci95": cis[k] for k in RANKED}
    for key, t in thresholds.items():
        scores: dict[str, Any] = at_threshold(logits, labels, t) | {
            "threshold": p_fake(t),
            "threshold_logit": t,
        }
        if n_bootstrap:
            scores["acc_ci95"] = cis[key]
        report[key] = scores
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "ece": ece(probs, labels),
        "ece_uncalibrated": ece(torch.sigmoid(logits.double() * temperature).float(), labels),
        "brier": brier(probs, labels),
    }
    if n_bootstrap:
        calibration["ece_ci95"] = cis["ece"]
    report["calibration"] = calibration
    return report


def _ci(values: Any) -> str:
    return f" [{values[0]:.3f}, {values[1]:.3f}]" if values else ""


def summary_markdown(report: dict[str, Any]) -> str:
    """A readable summary of ``build_report`` (plus breakdowns and localization, when present)."""
    cal = report["calibration"]
    lines = [
        f"# Evaluation: {report['n']} images ({report['n_real']} real, {report['n_fake']} fake)",
        "",
        f"- AUROC {report['auroc']:.3f}"
        + (f"{_ci(report['auroc_ci95'])} (95 % bootstrap CI)" if report.get("auroc_ci95") else ""),
        f"- Average precision {report['ap']:.3f}{_ci(report.get('ap_ci95'))}, "
        f"EER {report['eer']:.3f}{_ci(report.get('eer_ci95'))}",
        "- Fakes caught (TPR) at a false-positive rate of "
        + ", ".join(
            f"{f:.0%}: {report[k]:.3f}{_ci(report.get(f'{k}_ci95'))}" for k, f in OPERATING_FPRS.items()
        ),
        f"- Calibration: ECE {cal['ece']:.3f}{_ci(cal.get('ece_ci95'))} after temperature scaling "
        f"(T = {cal['temperature']:.3g}; {cal['ece_uncalibrated']:.3f} before), Brier {cal['brier']:.3f}",
        "",
    ]
    rows = []
    for key in ("at_0.5", "at_chosen_threshold"):
        s = report[key]
        name = "0.5" if key == "at_0.5" else f"{s['threshold']:.3f} (chosen on val)"
        acc = f"{s['acc']:.3f}{_ci(s.get('acc_ci95'))}"
        rows.append([name, acc, s["balanced_acc"], s["precision"], s["recall"], s["f1"]])
    with_ci = "acc_ci95" in report["at_0.5"]
    header = ["threshold", "acc [95 % CI]" if with_ci else "acc", "balanced acc", "precision", "recall", "F1"]
    lines += markdown_table(header, rows)
    (tn, fp), (fn, tp) = report["at_chosen_threshold"]["confusion"]
    lines += [
        "",
        f"Confusion at the chosen threshold: real {tn} right / {fp} wrong, fake {tp} right / {fn} wrong.",
    ]
    for kind, groups in (report.get("breakdowns") or {}).items():
        if groups:
            columns = {"n_fake": "fakes", "auroc": "AUROC vs all reals", "recall": "recall"}
            if any("auroc_own_reals" in v for v in groups.values()):  # a generator's own reals (GenImage)
                columns["auroc_own_reals"] = "AUROC vs its own reals"
            table = [[g, *(v.get(k, "") for k in columns)] for g, v in groups.items()]
            lines += ["", *markdown_table([kind, *columns.values()], table)]
    if video := report.get("video"):
        lines += ["", *video_markdown(video)]
    if abstain := report.get("abstain"):
        lines += ["", abstain_line(abstain)]
    if check := report.get("shortcut_check"):
        lines += ["", f"Metadata-only baseline on these images: {check['finding']}"]
    if loc := report.get("localization"):
        lines += [
            "",
            f"Localization ({loc['method']}): share of each fake's heatmap inside its replaced parts, "
            "against the share of the image they cover.",
            "",
        ]
        parts = [[g, v["n"], v["mass_inside"], v["area_share"]] for g, v in loc["parts"].items()]
        lines += markdown_table(["parts", "fakes", "heatmap mass inside", "area share"], parts)
    return "\n".join(lines) + "\n"


def abstain_line(a: dict[str, Any]) -> str:
    """The abstention band's figures in one sentence."""
    return (
        f"Uncertain answers (model.abstain: {a['target']} {a['value']:g}; p_fake in ({a['low_p_fake']:.3f}, "
        f"{a['high_p_fake']:.3f})): coverage {a['coverage']:.3f}{_ci(a.get('coverage_ci95'))} "
        f"({a['uncertain']} uncertain), risk among the answered {a['selective_risk']:.3f}"
        f"{_ci(a.get('selective_risk_ci95'))} (every image answered: {a['risk_at_full_coverage']:.3f})."
    )


def video_markdown(video: dict[str, Any]) -> list[str]:
    """The video section of the summary: frame- and video-level scores, and the breakdown by method."""
    f = video["frames_per_video"]
    lines = [
        f"## Videos: {video['n_videos']} ({f['min']}-{f['max']} face crops each); video score = "
        f"{video['aggregate']} of its frames' p_fake; 95 % CIs resample videos",
        "",
    ]
    names = ["auroc", "ap", "eer", "tpr_at_fpr_1", "acc"]
    rows = [
        [
            level,
            video[level]["n"],
            *(f"{video[level][k]:.3f}{_ci(video[level].get(f'{k}_ci95'))}" for k in names),
        ]
        for level in ("frame", "video")
    ]
    lines += markdown_table(["level", "n", "AUROC", "AP", "EER", "TPR at 1 % FPR", "acc"], rows)
    if video["by_method"]:
        header = ["method", "fake videos", "frame AUROC vs all reals", "video AUROC", "video recall"]
        lines += ["", *markdown_table(header, (
            [m, v["n_fake_videos"], v["frame_auroc"], v["video_auroc"], v["video_recall"]]
            for m, v in video["by_method"].items()
        ))]  # fmt: skip
    return lines
