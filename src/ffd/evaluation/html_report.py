"""report.html: one self-contained page of an eval (figures embedded as PNG data), for a person.

Headline metrics with CIs, the confusion matrix, ROC/PR, calibration, breakdowns, the
robustness sweep when it ran, and a Grad-CAM grid of the most confident errors (from a
checkpoint). Every figure is one ``<img>`` of the page itself: it can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from ffd.data.facts import CLASS_NAMES, part_boxes, replaced_parts
from ffd.data.records import Record
from ffd.data.settings import Limits
from ffd.engine.gradcam import explain_files, overlay
from ffd.engine.scorers import CheckpointScorer, Scorer
from ffd.metrics.report import abstain_line
from ffd.metrics.scores import OPERATING_FPRS

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.3em}
.figs{display:flex;flex-wrap:wrap;align-items:flex-start}.muted{color:#666}
.warning{background:#fff3cd;border:1px solid #e0a800;padding:.5em}"""


def _png(path_or_image: Path | Image.Image) -> str:
    if isinstance(path_or_image, Path):
        data = path_or_image.read_bytes()
    else:
        buf = io.BytesIO()
        path_or_image.save(buf, "PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _img(src: Path | Image.Image, alt: str) -> str:
    return f'<img src="{_png(src)}" alt="{html.escape(alt)}">'


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], keys: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        key = f' data-key="{keys[i]}"' if keys else ""
        body.append(f"<tr{key}>" + "".join(f"<td>{_num(v)}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _ci(v: Any) -> str:
    return f"[{v[0]:.4f}, {v[1]:.4f}]" if v else ""


def headline_rows(report: Mapping[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """(rows of name, value, 95 % CI) and the metrics.json key of each row."""
    cal, chosen = report["calibration"], report["at_chosen_threshold"]
    items: list[tuple[str, str, Any, Any]] = [
        ("AUROC", "auroc", report["auroc"], report.get("auroc_ci95")),
        ("average precision", "ap", report["ap"], report.get("ap_ci95")),
        ("EER", "eer", report["eer"], report.get("eer_ci95")),
        *(
            (f"TPR at {f:.0%} FPR", k, report[k], report.get(f"{k}_ci95"))
            for k, f in OPERATING_FPRS.items()
        ),
        (f"accuracy at the threshold {chosen['threshold']:.4f}", "at_chosen_threshold.acc", chosen["acc"],
         chosen.get("acc_ci95")),
        ("accuracy at 0.5", "at_0.5.acc", report["at_0.5"]["acc"], report["at_0.5"].get("acc_ci95")),
        ("ECE (calibrated)", "calibration.ece", cal["ece"], cal.get("ece_ci95")),
        ("ECE before temperature scaling", "calibration.ece_uncalibrated", cal["ece_uncalibrated"], None),
        ("Brier score", "calibration.brier", cal["brier"], None),
        ("temperature", "calibration.temperature", cal["temperature"], None),
    ]  # fmt: skip
    return [[name, value, _ci(ci)] for name, _, value, ci in items], [key for _, key, _, _ in items]


def confident_errors(
    scorer: Scorer, records: Sequence[Record], logits: torch.Tensor, method: str, limits: Limits, k: int = 8
) -> Image.Image | None:
    """A Grad-CAM grid of the k most confidently wrong images at the model's threshold (checkpoints only:
    ONNX has no gradients)."""
    if not isinstance(scorer, CheckpointScorer):
        return None
    threshold = scorer.threshold_logit
    labels = torch.tensor([r.label for r in records])
    wrong = ((logits >= threshold).long() != labels).nonzero().flatten()
    if not len(wrong):
        return None
    confidence = (logits[wrong] - threshold).abs()
    picked = [records[int(i)] for i in wrong[confidence.argsort(descending=True)[:k]]]
    tiles = []
    model = scorer.model.to(scorer.device)
    for (_, img, cam, _), r in zip(
        explain_files(model, [Path(r.path) for r in picked], method, k, limits), picked, strict=True
    ):
        boxes = part_boxes(replaced_parts(r.parts), cam.shape[-1])
        tiles.append(pil_to_tensor(overlay(img, cam, boxes)))
    model.cpu()
    grid = make_grid(tiles, nrow=4, padding=4, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def _shortcut(check: Mapping[str, Any] | None) -> list[str]:
    """The metadata-only baseline's finding: a warning box when file metadata alone separates the classes."""
    if not check:
        return []
    style = " class='warning'" if check["shortcut"] else " class='muted'"
    return [f"<p id='shortcut'{style}>{html.escape(check['finding'])}</p>"]


def render(
    out: Path, report: Mapping[str, Any], robustness: Mapping[str, Any] | None, errors: Image.Image | None
) -> str:
    """The page's HTML."""
    figures = out / "figures"
    headline, keys = headline_rows(report)
    checkpoint = html.escape(str(report.get("checkpoint", "")))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ffd eval: {checkpoint}</title>"
        f"<style>{STYLE}</style></head><body>",
        "<h1>Evaluation</h1>",
        f"<p class='muted'>{checkpoint}: {report['n']} images "
        f"({report['n_real']} real, {report['n_fake']} fake); fake is the positive class.</p>",
        *_shortcut(report.get("shortcut_check")),
        "<h2>Headline metrics (95 % bootstrap CIs)</h2>",
        '<div id="metrics">' + _table(["metric", "value", "95 % CI"], headline, keys) + "</div>",
        *([f"<p id='abstain'>{html.escape(abstain_line(a))}</p>"] if (a := report.get("abstain")) else []),
        "<h2>Errors and curves</h2><div class='figs'>",
        *(_img(figures / f"{name}.png", name)
          for name in ("confusion", "roc", "pr", "reliability", "scores", "risk_coverage")
          if (figures / f"{name}.png").exists()),
        "</div>",
    ]  # fmt: skip
    for kind, groups in (report.get("breakdowns") or {}).items():
        if groups:
            parts.append(f"<h3>By {html.escape(kind)}</h3>")
            rows = [[g, v["n_fake"], v["auroc"], v["recall"]] for g, v in groups.items()]
            parts.append(_table([kind, "fakes", "AUROC vs all reals", "recall"], rows))
    if robustness:
        parts.append("<h2>Robustness</h2><p>Each perturbation applied to real and fake alike; flips: "
                     "labels that differ from the clean run's.</p>")  # fmt: skip
        table = [
            [
                "clean",
                "",
                robustness["clean"]["auroc"],
                robustness["clean"]["tpr_at_fpr_1"],
                robustness["clean"]["acc"],
                0.0,
            ]
        ]
        for name, family in robustness["families"].items():
            table += [
                [name, r["severity"], r["auroc"], r["tpr_at_fpr_1"], r["acc"], r["flip_rate"]] for r in family
            ]
        parts.append(_table(["family", "severity", "AUROC", "TPR@1%FPR", "acc", "flips"], table))
        parts.append("<div class='figs'>")
        parts += [_img(figures / f"robustness_{n}.png", f"robustness {n}") for n in robustness["families"]]
        parts.append("</div>")
    if errors is not None:
        parts.append("<h2>Most confident errors (Grad-CAM; white boxes: replaced parts)</h2>")
        parts.append(_img(errors, "most confident errors"))
    parts.append(f"<p class='muted'>Classes: {', '.join(CLASS_NAMES)}.</p></body></html>")
    return "\n".join(parts)


def write_html_report(
    out: Path, report: Mapping[str, Any], robustness: Mapping[str, Any] | None, errors: Image.Image | None
) -> Path:
    path = out / "report.html"
    # UTF-8: a file name that is not UTF-8 is shown by its bytes' escapes (\\xff)
    path.write_text(render(out, report, robustness, errors), encoding="utf-8", errors="backslashreplace")
    return path
