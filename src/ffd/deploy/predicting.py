"""Scoring image files: one row per file (``ffd.deploy.rows``), in input order."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ffd.data.decoding import Decoder
from ffd.data.faces import FaceCropper
from ffd.data.facts import UNCERTAIN
from ffd.data.settings import Limits
from ffd.data.video.decode import is_video
from ffd.deploy.rows import FIELDS, result_row, write_rows
from ffd.deploy.video_predicting import expand_media, predict_media
from ffd.engine.scorers import Scorer, load_scorer
from ffd.engine.scoring import score_files
from ffd.errors import ConfigError, FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)


def predict(
    scorer: Scorer,
    files: Sequence[Path],
    batch_size: int,
    limits: Limits,
    cropper: FaceCropper | None = None,
    crops_dir: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One result row per file, in order; files that can't be scored get a status and message instead.

    Args:
        scorer: A checkpoint or ONNX model (``ffd.engine.scorers.load_scorer``).
        files: Image files.
        batch_size: Images per forward pass.
        limits: What a file may be (beyond: an ``unreadable`` row).
        cropper: Crop each photo to its largest face first (status ``no_face`` if none).
        crops_dir: Save each face crop there, as ``<index>_<name>.png``.
    """
    index = 0
    decode = Decoder(int(scorer.preprocess["size"]), limits, cropper)
    for batch in score_files(files, scorer.logit, batch_size, decode):
        logits = dict(zip(map(id, batch.ok), batch.output.tolist() if batch.output is not None else [],
                          strict=True))  # fmt: skip
        for item in batch.items:
            if item.crop is not None and crops_dir is not None:
                item.crop.save(crops_dir / f"{index:05d}_{item.path.stem}.png")
            yield result_row(str(item.path), item.status, item.message, logits.get(id(item)),
                             scorer.threshold_logit, scorer.abstain_band)  # fmt: skip
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
    limits = Limits.from_config(cfg.limits)
    if any(map(is_video, files)):  # per-frame rows, a video row and a timeline each (video_predicting)
        images = partial(predict, scorer, batch_size=cfg.batch_size, limits=limits, cropper=cropper,
                         crops_dir=crops_dir)  # fmt: skip
        return predict_media(cfg, scorer, files, images, limits)
    rows = predict(scorer, files, cfg.batch_size, limits, cropper, crops_dir)
    counts = write_rows(output, FIELDS, progress(rows, "Scoring", total=len(files), unit="img"))
    log.info(
        "%d files: %d real, %d fake, %d uncertain, %d unreadable, %d without a face (threshold %.3g) -> %s",
        len(files), counts["real"], counts["fake"], counts[UNCERTAIN], counts["unreadable"],
        counts["no_face"], scorer.threshold, output,
    )  # fmt: skip
    if not counts["real"] + counts["fake"] + counts[UNCERTAIN]:
        raise FfdError(f"None of the {len(files)} files could be scored; see {output}.")
    return counts
