"""Which crop settings a model's videos get: the ones it was trained with, so its numbers reproduce."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ffd.config import CONF_DIR
from ffd.data.video.crops import INDEX, CropSettings

log = logging.getLogger(__name__)


def run_crop_settings(training_run: Path) -> CropSettings | None:
    """The settings the crops of a training run's manifest were made with (each crop folder's index
    records them), or None for a run on images (or one whose manifest is gone)."""
    manifest = training_run / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r.get("video") and r.get("frame")), None)
    index = Path(row["path"]).parent / INDEX if row else None
    if index is None or not index.is_file():
        return None
    return CropSettings.from_config(json.loads(index.read_text())["settings"])


def crop_settings(override: Mapping[str, Any] | None, training_run: Path | None) -> CropSettings:
    """``override`` when given; else those of the model's training run (``run_crop_settings``); else
    conf/data/video.yaml's (a model trained on images)."""
    if override:
        return CropSettings.from_config(override)
    if training_run is not None and (settings := run_crop_settings(training_run)) is not None:
        log.info("Video frames and face crops as in the model's training run: %s", settings)
        return settings
    # Read, not composed: this also runs inside ffd.eval's and ffd.predict's own Hydra app.
    return CropSettings.from_config(
        OmegaConf.select(OmegaConf.load(CONF_DIR / "data" / "video.yaml"), "video")
    )
