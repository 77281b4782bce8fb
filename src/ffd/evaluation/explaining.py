"""Explaining images one by one: heatmap overlays and, for CIPLAB-named fakes, localization scores."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from ffd import rules
from ffd.data.facts import label_name, p_fake, parse_fake_name, part_boxes, replaced_parts
from ffd.data.io import expand_input
from ffd.data.settings import Limits
from ffd.engine.gradcam import explain_files, overlay
from ffd.errors import FfdError
from ffd.evaluation.localization import localization, localization_report
from ffd.files import atomic_text
from ffd.models.checkpoint import load_checkpoint
from ffd.models.shipped import inference_settings

log = logging.getLogger(__name__)


def explain(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """``python -m ffd.explain``: overlays, explain.csv and localization.json for ``cfg.input``."""
    rules.check("method", cfg.method)
    model = load_checkpoint(cfg.ckpt_path)
    device, dtype = inference_settings(model.inference_precision, cfg.device, torch.cuda.is_available())
    if device.type == "cuda" and dtype is None:  # fp32 means fp32: no TF32 matmuls, as the scorers
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model.to(device)
    log.info("Explaining on %s at %s precision", device, model.inference_precision)
    files = expand_input(str(cfg.input))
    out = Path(cfg.paths.output_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    parts, cams = [], []
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    with atomic_text(out / "explain.csv") as fh, autocast:
        writer = csv.writer(fh)
        writer.writerow(["path", "p_fake", "logit", "label", "parts", "mass_inside", "area_share", "overlay"])
        for i, (path, img, cam, logit) in enumerate(
            explain_files(model, files, cfg.method, cfg.batch_size, Limits.from_config(cfg.limits))
        ):
            bits = parse_fake_name(path)[1]  # CIPLAB fake names carry the replaced parts
            names = replaced_parts(bits)
            boxes = part_boxes(names, cam.shape[-1])
            inside, share = localization(cam, boxes) if boxes else (None, None)
            png = out / "overlays" / f"{i:05d}_{path.stem}.png"
            overlay(img, cam, boxes).save(png)
            label = label_name(logit, model.threshold_logit, model.abstain_band)
            row = [path, repr(p_fake(logit)), repr(logit), label, "+".join(names), inside, share, png.name]
            writer.writerow(row)
            parts.append(bits)
            cams.append(cam)
    if not cams:
        raise FfdError(f"None of the {len(files)} files could be read.")
    report = localization_report(zip(parts, cams, strict=True))
    (out / "localization.json").write_text(json.dumps(report, indent=2))
    for name, s in report.items():
        log.info(
            "%-9s n=%4d  heatmap mass inside %.3f  (area share %.3f)",
            name,
            s["n"],
            s["mass_inside"],
            s["area_share"],
        )
    log.info("%d overlays and explain.csv in %s", len(cams), out.resolve())
    return report
