"""Does it hold up? The eval set under families of perturbations, at several severities.

Each file is read and decoded once, at full size; each perturbed image is scored once
(one forward pass), by the same scorer as the clean run. For each family and severity:
AUROC, AP, EER, TPR at 1 % FPR, accuracy at the model's threshold and ECE, each with its
bootstrap CI, and the share of images whose label flips against the clean run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ffd.data.decoding import Item, pixels
from ffd.data.io import decode_rgb, read_file
from ffd.data.perturbations import op, severity_name
from ffd.data.records import Record
from ffd.data.settings import Limits
from ffd.engine.scorers import Scorer
from ffd.engine.scoring import score_files
from ffd.metrics.calibration import ece
from ffd.metrics.figures import robustness_figure
from ffd.metrics.resampling import bootstrap_intervals
from ffd.metrics.scores import ranking
from ffd.metrics.tables import markdown_table
from ffd.progress import progress

log = logging.getLogger(__name__)

CI_SCORES = ("auroc", "ap", "eer", "tpr_at_fpr_1")


def condition_scores(
    logits: torch.Tensor, labels: torch.Tensor, threshold: float, clean: torch.Tensor, n_boot: int, seed: int
) -> dict[str, Any]:
    """One condition's figures (see the module doc) from the logits of fake, at a threshold on them; CIs
    over the same bootstrap resamples."""
    probs = torch.sigmoid(logits.double()).float()
    acc = float(((logits >= threshold).long() == labels).float().mean())
    row: dict[str, Any] = {**ranking(logits, labels), "acc": acc, "ece": ece(probs, labels)}
    if n_boot:
        names = [*CI_SCORES, "ece"]
        cis = bootstrap_intervals(logits, labels, names, n_boot, seed, {"acc": threshold}, probs=probs)
        row |= {f"{k}_ci95": v for k, v in cis.items()}
    row["flip_rate"] = float(((logits >= threshold) != (clean >= threshold)).float().mean())
    return row


def _score(
    scorer: Scorer, images: Sequence[torch.Tensor], paths: Sequence[str], batch_size: int
) -> torch.Tensor:
    items = [
        Item(Path(p), "ok", image=x.permute(1, 2, 0).contiguous()) for p, x in zip(paths, images, strict=True)
    ]
    return torch.cat(
        [batch.all_ok("A perturbed image") for batch in score_files(items, scorer.logit, batch_size)]
    )


def sweep(
    scorer: Scorer,
    records: Sequence[Record],
    clean: torch.Tensor,
    settings: Mapping[str, Any],
    batch_size: int,
    limits: Limits,
) -> dict[str, Any]:
    """Score ``records`` under every family and severity of ``settings`` (a ``conf/robustness/``
    config as a plain dict); ``clean``: their logits as eval scored them."""
    start = time.perf_counter()
    families = settings["families"]
    data = [read_file(r.path) for r in records]  # the eval decoded them already: they are readable
    full = [pixels(decode_rgb(d, None, limits)).permute(2, 0, 1) for d in data]  # (3, H, W), full size
    labels = torch.tensor([r.label for r in records])
    paths = [r.path for r in records]
    n_boot, seed = int(settings["bootstrap"]), int(settings["seed"])
    total = sum(len(f["severities"]) for f in families.values()) * len(records)
    bar = progress(None, "Robustness sweep", total=total, unit="img")
    out: dict[str, Any] = {"n": len(records), "threshold": scorer.threshold, "families": {}}
    out["clean"] = condition_scores(clean, labels, scorer.threshold_logit, clean, n_boot, seed)
    for f_i, (name, family) in enumerate(families.items()):
        fn = op(family["op"])
        rows = []
        for s_i, value in enumerate(family["severities"]):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + f_i * 1_000 + s_i)  # noise draws: seeded per condition
                images = [fn(x, value, d) for x, d in zip(full, data, strict=True)]
            logits = _score(scorer, images, paths, batch_size)
            bar.update(len(records))
            row = condition_scores(logits, labels, scorer.threshold_logit, clean, n_boot, seed)
            rows.append({"severity": severity_name(value), **row})
        out["families"][name] = rows
    bar.close()
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["images_scored"] = total
    return out


def _ci(row: Mapping[str, Any], key: str) -> str:
    ci = row.get(f"{key}_ci95")
    return f"{row[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def robustness_markdown(result: Mapping[str, Any]) -> str:
    header = ["family", "severity", "AUROC [95 % CI]", "AP", "EER", "TPR@1%FPR", "acc", "ECE", "flips"]
    rows = [["clean", "", _ci(result["clean"], "auroc"), *_cells(result["clean"])]]
    for name, family in result["families"].items():
        rows += [[name, r["severity"], _ci(r, "auroc"), *_cells(r)] for r in family]
    lines = [
        f"# Robustness: {result['n']} images, threshold {result['threshold']:.3f}",
        "",
        "Each perturbation is applied to real and fake images alike; flips: the share of images whose "
        "label differs from the clean run's.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def _cells(r: Mapping[str, Any]) -> list[Any]:
    return [r["ap"], r["eer"], _ci(r, "tpr_at_fpr_1"), _ci(r, "acc"), r["ece"], r["flip_rate"]]


def write_robustness(out: Path, result: Mapping[str, Any]) -> None:
    """robustness.json, robustness.md and figures/robustness_<family>.png."""
    (out / "robustness.json").write_text(json.dumps(result, indent=2))
    (out / "robustness.md").write_text(robustness_markdown(result))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, rows in result["families"].items():
        robustness_figure(name, rows, result["clean"]).savefig(
            out / "figures" / f"robustness_{name}.png", dpi=100, bbox_inches="tight"
        )
