"""Evaluate a checkpoint: ``python -m ffd.eval ckpt_path=outputs/train/<run>/checkpoints/<best>.ckpt``.

By default it scores the training run's own test split (from the run's
manifest.csv); ``data.root=PATH`` scores any other data set instead (all of
its usable images unless ``data.split`` says otherwise). Writes metrics.json,
summary.md, predictions.csv and figures into the eval run folder.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from ffd.data.manifest import CLASS_NAMES, FAKE, Record, read_manifest, scan
from ffd.errors import ConfigError, FfdError, exit_on_user_error
from ffd.gradcam import METHODS, explain_files, localization_report
from ffd.inference import CheckpointScorer, load_scorer
from ffd.metrics.breakdowns import breakdowns
from ffd.metrics.figures import all_figures
from ffd.metrics.report import build_report, summary_markdown
from ffd.models.checkpoint import run_folder
from ffd.models.module import FakeFaceClassifier
from ffd.predict import predict
from ffd.runtime import register_resolvers, tune_malloc

log = logging.getLogger(__name__)
register_resolvers()


def select_records(cfg: DictConfig, ckpt_path: Path) -> list[Record]:
    if cfg.data.root is None:
        manifest = run_folder(ckpt_path) / "manifest.csv"
        if not manifest.exists():
            raise FfdError(f"No manifest.csv next to the checkpoint's run ({manifest}); pass data.root=PATH.")
        records, split = read_manifest(manifest), cfg.data.split or "test"
    else:
        if cfg.data.split not in (None, "all"):
            # A new split of the training data would not be the run's split: it would leak.
            raise ConfigError(
                "With data.root, eval scores every image of that data set (data.split=all); "
                "to score a split of the training run, leave data.root unset."
            )
        records, split = scan(cfg.data.root), "all"
    rows = [r for r in records if r.ok and (split == "all" or r.split == split)]
    if not rows:
        raise FfdError(f"No usable images in split {split!r} (choose data.split=train|val|test|all).")
    return rows


def write_outputs(
    out: Path, records: list[Record], probs: torch.Tensor, labels: torch.Tensor, report: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report))
    threshold = report["at_chosen_threshold"]["threshold"]
    with (out / "predictions.csv").open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "label", "p_fake", "predicted"])
        for r, p in zip(records, probs.tolist(), strict=True):
            rows.writerow([r.path, CLASS_NAMES[r.label], f"{p:.6f}", CLASS_NAMES[int(p >= threshold)]])
    tensorboard = SummaryWriter(str(out / "tensorboard"))
    (out / "figures").mkdir(exist_ok=True)
    for name, fig in all_figures(probs, labels, report).items():
        fig.savefig(out / "figures" / f"{name}.png", dpi=100, bbox_inches="tight")
        tensorboard.add_figure(f"eval/{name}", fig)  # closes the figure
    tensorboard.close()


def localize(
    model: FakeFaceClassifier, records: list[Record], method: str, batch_size: int
) -> dict[str, Any]:
    """Heatmap mass inside the replaced parts of the fakes with part metadata (see ``ffd.gradcam``)."""
    fakes = [r for r in records if r.label == FAKE and "1" in r.parts]
    cams = explain_files(model.float(), [Path(r.path) for r in fakes], method, batch_size)
    parts = localization_report((r.parts, cam) for r, (_, _, cam, _) in zip(fakes, cams, strict=True))
    return {"method": method, "parts": parts}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.localization not in (None, *METHODS):
        raise ConfigError(f"localization={cfg.localization}: choose one of {METHODS}, or null to skip it.")
    ckpt_path = Path(cfg.ckpt_path)
    scorer = load_scorer(ckpt_path)
    records = select_records(cfg, ckpt_path)
    rows = list(predict(scorer, [Path(r.path) for r in records], cfg.data.batch_size))
    if failed := [row for row in rows if row["status"] != "ok"]:
        raise FfdError(f"{len(failed)} images became unreadable since the manifest was made: {failed[0]}")
    probs = torch.tensor([row["p_fake"] for row in rows])
    labels = torch.tensor([r.label for r in records])
    report = build_report(probs, labels, scorer.threshold, cfg.bootstrap, cfg.seed)
    report["checkpoint"] = str(ckpt_path.resolve())
    report["breakdowns"] = breakdowns(records, probs, scorer.threshold)
    if cfg.localization and any(r.parts for r in records):
        if isinstance(scorer, CheckpointScorer):
            report["localization"] = localize(scorer.model, records, cfg.localization, cfg.data.batch_size)
        else:
            log.info("No localization for an ONNX model (Grad-CAM needs the checkpoint's gradients).")
    out = Path(cfg.paths.output_dir)
    write_outputs(out, records, probs, labels, report)
    log.info("\n%s", summary_markdown(report))
    log.info("Eval folder: %s", out.resolve())
    return report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    tune_malloc()
    main()
