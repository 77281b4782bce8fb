"""Generalization matrices: train recipes on several data sets, evaluate every model on every data set.

Each (recipe, data set) model is trained by ``python -m ffd.train`` in its own run folder
(or reused: ``runs.<recipe>/<data set>=<run folder>``, or found complete from an earlier
matrix in the same folder), then scored on every data set's test split, read from that
data set's own run manifest. Cells: AUROC with its bootstrap CI, AP, EER, TPR at 1 % FPR.
The diagonal is the in-distribution test; the rest is cross-data-set (cross-method with
the synthetic generator's ``method``).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ffd.data.decoding import pixels
from ffd.data.images import DecodedImages
from ffd.data.records import Record, read_manifest
from ffd.data.settings import Limits
from ffd.engine.scorers import load_scorer
from ffd.errors import FfdError
from ffd.evaluation.evaluating import score
from ffd.metrics.figures import matrix_figure
from ffd.metrics.resampling import bootstrap_intervals
from ffd.metrics.scores import ranking
from ffd.metrics.tables import markdown_table
from ffd.studies.training_runs import best_checkpoint, train_process

log = logging.getLogger(__name__)

CI_SCORES = ("auroc", "tpr_at_fpr_1")


def train_run(name: str, overrides: list[str], folder: Path) -> Path:
    """Train one model with ``python -m ffd.train`` into ``folder`` (kept if already complete)."""
    if (folder / "metrics.json").exists():
        log.info("%s: reusing %s", name, folder)
        return folder
    log.info("%s: training into %s", name, folder)
    train_process(overrides, folder, folder.with_name(folder.name + ".log"))
    return folder


def test_rows(run: Path) -> list[Record]:
    rows = [r for r in read_manifest(run / "manifest.csv") if r.ok and r.split == "test"]
    if not rows:
        raise FfdError(f"{run}/manifest.csv has no test rows.")
    return rows


def cell(logits: torch.Tensor, labels: torch.Tensor, n_boot: int, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = ranking(logits, labels)
    if n_boot:
        cis = bootstrap_intervals(logits, labels, CI_SCORES, n_boot, seed)
        row |= {f"{k}_ci95": v for k, v in cis.items()}
    return row


def run_matrix(cfg: DictConfig) -> dict[str, Any]:
    """``python -m ffd.matrix``: train (or reuse) every recipe on every data set, score each model on
    each data set's test split, write matrix.json, matrix.md, matrix.csv and matrix.png."""
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    datasets: dict[str, list[str]] = OmegaConf.to_container(cfg.datasets, resolve=True)  # type: ignore[assignment]
    recipes: dict[str, list[str]] = OmegaConf.to_container(cfg.recipes, resolve=True)  # type: ignore[assignment]
    reuse = dict(cfg.runs or {})
    runs: dict[str, Path] = {}
    for recipe, recipe_overrides in recipes.items():
        for data, data_overrides in datasets.items():
            name = f"{recipe}/{data}"
            given = reuse.get(name)
            runs[name] = (
                Path(given)
                if given
                else train_run(name, [*recipe_overrides, *data_overrides], out / "runs" / recipe / data)
            )
    trained_s = time.perf_counter() - start
    # Every data set's test split, from its run of the first recipe (all recipes split a data set alike).
    first = next(iter(recipes))
    tests = {data: test_rows(runs[f"{first}/{data}"]) for data in datasets}
    cells: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        scorer = load_scorer(best_checkpoint(run), cfg.runtime, Path(cfg.paths.cache_dir) / "runtimes")
        trained_on = {r.sha256 for r in read_manifest(run / "manifest.csv") if r.ok and r.split == "train"}
        cells[name] = {}
        for data, rows in tests.items():
            images = DecodedImages(pixels, int(scorer.preprocess["size"]), Limits.from_config(cfg.limits))
            logits, _ = score(scorer, rows, cfg.batch_size, images, None)
            labels = torch.tensor([r.label for r in rows])
            cells[name][data] = cell(logits, labels, cfg.bootstrap, cfg.seed) | {
                "n": len(rows), "overlap_with_training": sum(r.sha256 in trained_on for r in rows),
            }  # fmt: skip
    result = {
        "datasets": {k: v for k, v in datasets.items()}, "recipes": recipes,
        "runs": {k: str(v) for k, v in runs.items()}, "cells": cells,
        "train_seconds": round(trained_s, 1), "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    write_matrix(out, result)
    return result


def _auroc(c: dict[str, Any]) -> str:
    ci = c.get("auroc_ci95")
    return f"{c['auroc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def matrix_markdown(result: dict[str, Any]) -> str:
    tests = list(result["datasets"])
    lines = [
        "# Generalization matrix: test AUROC [95 % CI] (rows: trained on; columns: tested on)",
        "",
        *markdown_table(
            ["model", *tests], ([m, *(_auroc(c[t]) for t in tests)] for m, c in result["cells"].items())
        ),
        "",
        "TPR at 1 % FPR:",
        "",
        *markdown_table(
            ["model", *tests],
            ([m, *(c[t]["tpr_at_fpr_1"] for t in tests)] for m, c in result["cells"].items()),
        ),
    ]
    overlap = sum(c[t]["overlap_with_training"] for c in result["cells"].values() for t in tests)
    lines += ["", f"Test images a model was trained on (by sha256): {overlap}."]
    return "\n".join(lines) + "\n"


def write_matrix(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(result, indent=2))
    (out / "matrix.md").write_text(matrix_markdown(result))
    tests = list(result["datasets"])
    with (out / "matrix.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "tested_on", "n", "auroc", "auroc_lo", "auroc_hi", "ap", "eer", "tpr_at_fpr_1"])
        for model, row in result["cells"].items():
            for t in tests:
                c = row[t]
                lo, hi = c.get("auroc_ci95", (float("nan"), float("nan")))
                w.writerow([model, t, c["n"], c["auroc"], lo, hi, c["ap"], c["eer"], c["tpr_at_fpr_1"]])
    values = [[result["cells"][m][t]["auroc"] for t in tests] for m in result["cells"]]
    matrix_figure(values, list(result["cells"]), tests).savefig(
        out / "matrix.png", dpi=100, bbox_inches="tight"
    )
    log.info("\n%s", matrix_markdown(result))
    log.info(
        "Matrix folder: %s (%.0f s, %.0f s of it training)",
        out.resolve(),
        result["seconds"],
        result["train_seconds"],
    )
