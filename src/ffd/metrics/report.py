"""The evaluation report: every score with its confidence interval, as JSON and Markdown."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import binary_auroc

from ffd.metrics.scores import at_threshold, bootstrap_ci, ranking
from ffd.metrics.tables import markdown_table


def _acc(threshold: float):
    return lambda p, y: float(((p >= threshold).long() == y).float().mean())


def build_report(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Scores at the default 0.5 and at the checkpoint's validation-chosen threshold, with 95 % CIs."""
    report: dict[str, Any] = {
        "n": len(labels),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
        **ranking(probs, labels),
    }
    if report["n_real"] and report["n_fake"] and n_bootstrap:
        report["auroc_ci95"] = bootstrap_ci(
            probs, labels, lambda p, y: float(binary_auroc(p, y)), n_bootstrap, seed
        )
    for key, t in (("at_0.5", 0.5), ("at_chosen_threshold", threshold)):
        scores: dict[str, Any] = dict(at_threshold(probs, labels, t))
        if n_bootstrap:
            scores["acc_ci95"] = bootstrap_ci(probs, labels, _acc(t), n_bootstrap, seed)
        report[key] = scores
    return report


def _ci(values: Any) -> str:
    return f" [{values[0]:.3f}, {values[1]:.3f}]" if values else ""


def summary_markdown(report: dict[str, Any]) -> str:
    """A readable summary of ``build_report`` (plus breakdowns and localization, when present)."""
    lines = [
        f"# Evaluation: {report['n']} images ({report['n_real']} real, {report['n_fake']} fake)",
        "",
        f"- AUROC {report['auroc']:.3f}{_ci(report.get('auroc_ci95'))} (95 % bootstrap CI)",
        f"- Average precision {report['ap']:.3f}, EER {report['eer']:.3f}",
        "",
    ]
    rows = []
    for key in ("at_0.5", "at_chosen_threshold"):
        s = report[key]
        name = "0.5" if key == "at_0.5" else f"{s['threshold']:.3f} (chosen on val)"
        acc = f"{s['acc']:.3f}{_ci(s.get('acc_ci95'))}"
        rows.append([name, acc, s["balanced_acc"], s["precision"], s["recall"], s["f1"]])
    header = ["threshold", "acc [95 % CI]", "balanced acc", "precision", "recall", "F1"]
    lines += markdown_table(header, rows)
    (tn, fp), (fn, tp) = report["at_chosen_threshold"]["confusion"]
    lines += [
        "",
        f"Confusion at the chosen threshold: real {tn} right / {fp} wrong, fake {tp} right / {fn} wrong.",
    ]
    for kind, groups in (report.get("breakdowns") or {}).items():
        if groups:
            header = [kind, "fakes", "AUROC vs all reals", "recall"]
            lines += [
                "",
                *markdown_table(
                    header, ([g, v["n_fake"], v["auroc"], v["recall"]] for g, v in groups.items())
                ),
            ]
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
