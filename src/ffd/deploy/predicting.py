"""Scoring image files: one row per file (path, p_fake, label, status, message), in input order."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ffd.data.decoding import Decoder, Item
from ffd.data.faces import FaceCropper
from ffd.data.facts import label_name
from ffd.data.video.decode import is_video
from ffd.deploy.video_predicting import expand_media, predict_media
from ffd.engine.scorers import Scorer, load_scorer
from ffd.engine.scoring import score_files
from ffd.errors import ConfigError, FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)

FIELDS = ["path", "p_fake", "label", "status", "message"]


def result_row(path: str, item: Item, p_fake: float | None, threshold: float) -> dict[str, Any]:
    """The row ffd reports for an input (``FIELDS``): its score and label, or why it has none."""
    label = label_name(p_fake, threshold) if p_fake is not None else ""
    return {"path": path, "p_fake": p_fake, "label": label, "status": item.status, "message": item.message}


def predict(
    scorer: Scorer,
    files: Sequence[Path],
    batch_size: int,
    cropper: FaceCropper | None = None,
    crops_dir: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One result row per file, in order; files that can't be scored get a status and message instead.

    Args:
        scorer: A checkpoint or ONNX model (``ffd.engine.scorers.load_scorer``).
        files: Image files.
        batch_size: Images per forward pass.
        cropper: Crop each photo to its largest face first (status ``no_face`` if none).
        crops_dir: Save each face crop there, as ``<index>_<name>.png``.
    """
    index = 0
    decode = Decoder(int(scorer.preprocess["size"]), cropper)
    for batch in score_files(files, scorer.p_fake, batch_size, decode):
        probs = dict(zip(map(id, batch.ok), batch.output or [], strict=True))
        for item in batch.items:
            p = probs.get(id(item))
            if item.crop is not None and crops_dir is not None:
                item.crop.save(crops_dir / f"{index:05d}_{item.path.stem}.png")
            yield result_row(str(item.path), item, p, scorer.threshold)
            index += 1


def _crops_dir(value: str | None) -> Path | None:
    if not value:
        return None
    crops_dir = Path(value)
    if crops_dir.is_dir() and any(crops_dir.iterdir()):
        raise ConfigError(
            f"crops_dir={crops_dir} is not empty: name a new folder, so no earlier file is replaced."
        )
    crops_dir.mkdir(parents=True, exist_ok=True)
    return crops_dir


def predict_files(cfg: DictConfig) -> Counter:
    """``python -m ffd.predict``: score ``cfg.input`` and write ``cfg.output`` (CSV or JSON Lines).

    Returns:
        Rows by label (real, fake) or status (unreadable, no_face).

    Raises:
        FfdError: nothing could be scored (the rows are written all the same).
    """
    scorer = load_scorer(cfg.ckpt_path, cfg.runtime, Path(cfg.paths.cache_dir) / "runtimes")
    files = expand_media(str(cfg.input))  # images and videos
    cropper = FaceCropper(cfg.face_margin, cfg.face_detector) if cfg.face_crop else None
    output = Path(cfg.output)
    if output.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"output={output} must end in .csv or .jsonl.")
    crops_dir = _crops_dir(cfg.crops_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    if any(
        map(is_video, files)
    ):  # per-frame rows, a video row and a timeline each (ffd.deploy.video_predicting)
        images = partial(predict, scorer, batch_size=cfg.batch_size, cropper=cropper, crops_dir=crops_dir)
        return predict_media(cfg, scorer, files, images)
    counts: Counter = Counter()
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS) if output.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        rows = predict(scorer, files, cfg.batch_size, cropper, crops_dir)
        for row in progress(rows, "Scoring", total=len(files), unit="img"):
            writer.writerow(row) if writer else fh.write(json.dumps(row) + "\n")
            counts[row["label"] or row["status"]] += 1
    log.info(
        "%d files: %d real, %d fake, %d unreadable, %d without a face (threshold %.3g) -> %s",
        len(files), counts["real"], counts["fake"], counts["unreadable"], counts["no_face"],
        scorer.threshold, output,
    )  # fmt: skip
    if not counts["real"] + counts["fake"]:
        raise FfdError(f"None of the {len(files)} files could be scored; see {output}.")
    return counts
