"""k-fold cross-validation of a training config: ``python -m ffd.train cv.folds=5``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from ffd.data.splits import Fold
from ffd.metrics.tables import markdown_table
from ffd.runtime import is_rank_zero

log = logging.getLogger(__name__)


def cross_validate(cfg: DictConfig, train: Callable[[DictConfig, Fold], dict[str, float]]) -> dict[str, dict]:
    """Train one model per fold into ``fold_<i>/`` and summarise the validation metrics.

    The test split is the one the config gives without CV, and CV never touches
    it (no fold is tested): it stays for one final evaluation.

    Returns:
        ``metric -> {"mean", "std", "folds"}`` over the folds' validation metrics.
    """
    k = int(cfg.cv.folds)
    out = Path(cfg.paths.output_dir)
    results = []
    for fold in range(k):
        fold_cfg = cfg.copy()
        with open_dict(fold_cfg):
            fold_cfg.paths.output_dir = str(out / f"fold_{fold}")
        log.info("Cross-validation: fold %d of %d", fold + 1, k)
        results.append(train(fold_cfg, (k, fold)))
    keys = sorted(k for k in results[0] if k.startswith("val/"))
    summary = {}
    for key in keys:
        values = torch.tensor([r[key] for r in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std()), "folds": values.tolist()}
    if not is_rank_zero():  # under DDP rank 0 scores the folds' checkpoints and writes the summary
        return summary
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# {k}-fold cross-validation (validation folds; test split untouched)", ""]
    rows = ([m, v["mean"], v["std"]] for m, v in summary.items())
    lines += markdown_table(["metric", "mean", "std"], rows, digits=4)
    (out / "cv_summary.md").write_text("\n".join(lines) + "\n")
    log.info("\n%s", "\n".join(lines))
    return summary
