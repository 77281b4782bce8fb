"""Evaluating a model on labelled images: scores with intervals, breakdowns, localization, figures.

One pass over the images: each is decoded once, scored, and (for fakes with part
metadata, from a checkpoint) explained with Grad-CAM on the same tensor.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ffd import rules
from ffd.data.decoding import Decoder, pixels
from ffd.data.facts import CLASS_NAMES, FAKE, label_name, p_fake
from ffd.data.images import DecodedImages
from ffd.data.layouts import as_data_root, data_roots
from ffd.data.manifest import scan
from ffd.data.records import Record, read_manifest
from ffd.data.reencode import Reencode
from ffd.data.settings import Limits
from ffd.data.video.crops import model_crop_settings
from ffd.data.video.video_layouts import discover_videos
from ffd.engine.gradcam import grad_cam
from ffd.engine.scorers import CheckpointScorer, Scorer, load_scorer
from ffd.engine.scoring import score_files
from ffd.errors import ConfigError, FfdError
from ffd.evaluation.html_report import confident_errors, write_html_report
from ffd.evaluation.localization import localization_report
from ffd.evaluation.robustness import robustness_markdown, sweep, write_robustness
from ffd.files import atomic_text
from ffd.metrics.breakdowns import breakdowns
from ffd.metrics.figures import all_figures
from ffd.metrics.metadata_baseline import metadata_baseline
from ffd.metrics.report import build_report, summary_markdown
from ffd.metrics.selective import selective_scores
from ffd.metrics.video import video_index, video_report
from ffd.progress import progress

log = logging.getLogger(__name__)


def select_records(cfg: DictConfig, scorer: Scorer, images: DecodedImages) -> list[Record]:
    """The rows to score: the training run's split (its manifest), or every usable image of ``dataset``."""
    if cfg.dataset is None:
        manifest = (scorer.training_run or Path(cfg.ckpt_path).parent) / "manifest.csv"
        if not manifest.exists():
            raise FfdError(f"No manifest.csv in the model's training run ({manifest}); pass dataset=PATH.")
        records, split = read_manifest(manifest), cfg.split or "test"
    else:
        if cfg.split not in (None, "all"):
            # A new split of another data set would not be the run's split: it would leak.
            raise ConfigError(
                "With dataset=PATH, eval scores every image of that data set (split=all); "
                "to score a split of the training run, leave dataset unset."
            )
        dataset = as_data_root(cfg.dataset)
        # A video data set's crops as the model's training run made them (or as cfg.video says).
        video = (
            model_crop_settings(cfg.video, cfg.video_as_trained, scorer.training_run)
            if data_roots(dataset) is None and discover_videos(Path(str(dataset))) else None
        )  # fmt: skip
        records = scan(dataset, images.limits, images, video, cfg.paths.cache_dir)  # decoded once, kept
        split = "all"
    rows = [r for r in records if r.ok and (split == "all" or r.split == split)]
    if not rows:
        raise FfdError(f"No usable images in split {split!r} (choose split=train|val|test|all).")
    return rows


def score(
    scorer: Scorer, records: list[Record], batch_size: int, images: DecodedImages, cam_method: str | None
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """The logit of fake of every record, and (part bits, heatmap) of the fakes with part metadata.

    Heatmaps need the checkpoint's gradients: an ONNX model gets none.
    """
    cam = scorer if isinstance(scorer, CheckpointScorer) and cam_method else None
    parts = {r.path: r.parts for r in records if cam is not None and r.label == FAKE and "1" in r.parts}
    kept = images if images.kept else None
    decode = Decoder(int(scorer.preprocess["size"]), images.limits, kept=kept, reencode=images.reencode)
    logits: list[torch.Tensor] = []
    cams: list[tuple[str, torch.Tensor]] = []
    bar = progress(None, "Scoring" + (f" and {cam_method}" if cam is not None else ""), len(records), "img")
    for batch in score_files([r.path for r in records], scorer.logit, batch_size, decode):
        logits.append(batch.all_ok("An image became unreadable since the manifest was made"))
        ok = batch.ok
        fakes = [i for i, it in enumerate(ok) if str(it.path) in parts]
        if cam is not None and fakes and batch.images is not None:
            x = cam.net.preprocess(batch.images[fakes].to(cam.device))
            maps, _ = grad_cam(cam.model, x, cam_method)  # type: ignore[arg-type]
            cams += [(parts[str(ok[i].path)], m) for i, m in zip(fakes, maps.cpu(), strict=True)]
        bar.update(len(batch.items))
    bar.close()
    return torch.cat(logits), cams


def write_outputs(
    out: Path, records: list[Record], logits: torch.Tensor, labels: torch.Tensor, report: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    threshold = report["at_chosen_threshold"]["threshold_logit"]
    if videos := report.get("video", {}).pop("videos", None):
        write_video_predictions(out / "video_predictions.csv", videos, threshold)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report))
    with atomic_text(out / "predictions.csv") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "label", "p_fake", "logit", "predicted"])
        for r, logit in zip(records, logits.tolist(), strict=True):
            rows.writerow([r.path, CLASS_NAMES[r.label], repr(p_fake(logit)), repr(logit),
                           label_name(logit, threshold)])  # fmt: skip
    tensorboard = SummaryWriter(str(out / "tensorboard"))
    (out / "figures").mkdir(exist_ok=True)
    for name, fig in all_figures(logits, labels, report).items():
        fig.savefig(out / "figures" / f"{name}.png", dpi=100, bbox_inches="tight")
        tensorboard.add_figure(f"eval/{name}", fig)  # closes the figure
    tensorboard.close()


def write_video_predictions(path: Path, videos: list[dict[str, Any]], threshold_logit: float) -> None:
    """One row per video: its label, method, face crops scored, aggregated p_fake (and logit), the call."""
    with atomic_text(path) as fh:
        rows = csv.writer(fh)
        rows.writerow(["video", "label", "method", "frames", "p_fake", "logit", "predicted"])
        for v in videos:
            rows.writerow([v["video"], CLASS_NAMES[v["label"]], v["method"], v["frames"], repr(v["p_fake"]),
                           repr(v["logit"]), label_name(v["logit"], threshold_logit)])  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``python -m ffd.eval``: score the records, write metrics.json, summary.md, predictions.csv, figures,
    report.html, and with ``robustness=...`` the perturbation sweep (robustness.json, robustness.md)."""
    rules.check_all({"localization": cfg.localization, "video_aggregate": cfg.video_aggregate})
    scorer = load_scorer(cfg.ckpt_path, cfg.runtime, Path(cfg.paths.cache_dir) / "runtimes")
    size = int(scorer.preprocess["size"])
    reencode = Reencode(cfg.seed) if cfg.reencode else None
    images = DecodedImages(pixels, size, Limits.from_config(cfg.limits), reencode)
    records = select_records(cfg, scorer, images)
    if cfg.localization and not isinstance(scorer, CheckpointScorer):
        log.info("No localization for an ONNX model (Grad-CAM needs the checkpoint's gradients).")
    logits, cams = score(scorer, records, cfg.batch_size, images, cfg.localization)
    labels = torch.tensor([r.label for r in records])
    # Video rows: every interval resamples videos (frames of one video are not independent samples).
    groups = video_index(records)[1] if any(r.video for r in records) else None
    report = build_report(
        logits, labels, scorer.threshold_logit, cfg.bootstrap, cfg.seed, scorer.temperature, groups
    )
    if groups is not None:
        report["video"] = video_report(
            records, logits, scorer.threshold_logit, cfg.video_aggregate, cfg.bootstrap, cfg.seed
        )
    report["checkpoint"] = str(Path(cfg.ckpt_path).resolve())
    if band := scorer.abstain_band:
        selective = selective_scores(logits, labels, scorer.threshold_logit, band, cfg.bootstrap, cfg.seed)
        report["abstain"] = {**band, **selective}
    if not any(r.video for r in records):  # (a video's face crops are all files ffd wrote)
        report["shortcut_check"] = metadata_baseline(records, cfg.seed, cfg.bootstrap)
        if report["shortcut_check"]["shortcut"]:
            log.warning("The evaluated images: %s", report["shortcut_check"]["finding"])
    report["breakdowns"] = breakdowns(records, logits, scorer.threshold_logit)
    if cams:
        report["localization"] = {"method": cfg.localization, "parts": localization_report(cams)}
    out = Path(cfg.paths.output_dir)
    write_outputs(out, records, logits, labels, report)
    log.info("\n%s", summary_markdown(report))
    robustness = None
    if cfg.get("robustness"):
        settings = OmegaConf.to_container(cfg.robustness, resolve=True)
        robustness = sweep(scorer, records, logits, settings, cfg.batch_size, images.limits)  # type: ignore[arg-type]
        write_robustness(out, robustness)
        log.info("\n%s", robustness_markdown(robustness))
        log.info("Robustness: %d images scored in %.1f s", robustness["images_scored"], robustness["seconds"])
    errors = confident_errors(scorer, records, logits, cfg.localization or "gradcam", images.limits)
    log.info("Report: %s", write_html_report(out, report, robustness, errors))
    log.info("Eval folder: %s", out.resolve())
    return report
