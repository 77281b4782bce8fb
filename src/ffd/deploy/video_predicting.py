"""Predicting on videos: a row per sampled frame, a row per video, and a timeline of p_fake.

A video's frames are sampled and its tracked face cropped as in training
(``ffd.data.video``; by default with the model's own training settings, so its numbers
reproduce), each crop is scored, and the video's score aggregates the frame scores
(mean by default). Frames without a face get ``status=no_face`` rows; a video with no
face at all gets a ``no_face`` video row. Images in the same input are scored as
``ffd.deploy.predicting`` scores them, in input order.
"""

from __future__ import annotations

import glob
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ffd import rules
from ffd.data.decoding import Decoder
from ffd.data.faces import FaceDetector
from ffd.data.facts import UNCERTAIN
from ffd.data.io import expand_input, image_files, is_file_entry
from ffd.data.settings import Limits
from ffd.data.video.crops import CropSettings, extract, model_crop_settings, resolve_detector
from ffd.data.video.decode import VideoDecodeError, is_video, video_files
from ffd.deploy.rows import VIDEO_FIELDS, result_row, write_rows
from ffd.engine.scorers import Scorer
from ffd.engine.scoring import score_files
from ffd.errors import FfdError
from ffd.metrics.video import AGGREGATES, timeline_figure

log = logging.getLogger(__name__)


def expand_media(spec: str) -> list[Path]:
    """The files an ``input`` names (``ffd.data.io.expand_input``), videos included: a file, a folder
    (its images and videos, recursively), a glob or a .txt list of paths."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if is_file_entry(p))
    elif path.is_dir():
        files = sorted(image_files(path) + video_files(path))
    else:
        return expand_input(spec)
    if not files:
        raise FfdError(f"input={spec} names no image or video files.")
    return files


def score_video(
    scorer: Scorer,
    path: Path,
    settings: CropSettings,
    cache_dir: Path,
    batch_size: int,
    aggregate: str,
    limits: Limits,
    detector: FaceDetector | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The video's row and its frame rows (sampled frames in order; those without a face ``no_face``)."""
    try:
        crops = extract(path, settings, cache_dir, limits, detector)
    except VideoDecodeError as err:
        return _row(path, None, scorer, "unreadable", str(err)), []
    frames = sorted(crops.crops)
    logits: list[float] = []
    decode = Decoder(int(scorer.preprocess["size"]), limits)
    for batch in score_files([crops.crops[i] for i in frames], scorer.logit, batch_size, decode):
        logits += batch.all_ok(f"A face crop of {path} in the cache became unreadable").tolist()
    by_frame = dict(zip(frames, logits, strict=True))
    no_face = "no face found (or not the tracked one)"
    rows = [
        _row(path, by_frame.get(i), scorer, "ok" if i in by_frame else "no_face",
             "" if i in by_frame else no_face, frame=i)
        for i in crops.sampled
    ]  # fmt: skip
    if not logits:
        video = _row(
            path, None, scorer, "no_face", f"no face in any of the {len(crops.sampled)} sampled frames"
        )
    else:
        score = float(AGGREGATES[aggregate](torch.tensor(logits)))
        message = f"{aggregate} of {len(logits)} frames"
        video = _row(path, score, scorer, "ok", message)
    video |= {"frames": len(logits), "no_face": len(crops.sampled) - len(frames)}
    return video, rows


def _row(path: Path, logit: float | None, scorer: Scorer, status: str, message: str,
         frame: int | str = "") -> dict[str, Any]:  # fmt: skip
    return result_row(str(path), status, message, logit, scorer.threshold_logit, scorer.abstain_band) | {
        "frame": frame, "frames": "", "no_face": ""}  # fmt: skip


def write_timeline(
    out: Path, video: dict[str, Any], frames: Sequence[dict[str, Any]], threshold: float
) -> Path:
    """A PNG of p_fake per frame (frames without a face marked), with the threshold and the video score."""
    scored = [(r["frame"], r["p_fake"]) for r in frames if r["p_fake"] is not None]
    missing = [r["frame"] for r in frames if r["p_fake"] is None]
    fig = timeline_figure(scored, missing, threshold, video["p_fake"], Path(video["path"]).name)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out


def predict_media(
    cfg: DictConfig,
    scorer: Scorer,
    files: Sequence[Path],
    score_images: Callable[[list[Path]], Iterable[dict]],
    limits: Limits,
) -> Counter:
    """``ffd.predict`` on an input with videos: ``cfg.output`` gets every image's row (``score_images``)
    and every video's frame rows and video row, in input order; a timeline PNG per video goes into
    ``<output stem>_timelines/``.

    Returns:
        Images and videos by label (real, fake) or status (unreadable, no_face).

    Raises:
        FfdError: nothing could be scored (the rows are written all the same).
    """
    rules.check("video_aggregate", cfg.video_aggregate)
    settings, detector = resolve_detector(
        model_crop_settings(cfg.video, cfg.video_as_trained, scorer.training_run)
    )
    output, cache_dir = Path(cfg.output), Path(cfg.paths.cache_dir)
    timelines = output.with_name(output.stem + "_timelines")
    timelines.mkdir(parents=True, exist_ok=True)
    images = iter(score_images([f for f in files if not is_video(f)]))
    rows = _rows(files, images, scorer, (settings, detector), cache_dir, cfg, timelines, limits)
    counts = write_rows(output, VIDEO_FIELDS, rows)
    log.info(
        "%d inputs (%d videos): %d real, %d fake, %d uncertain, %d unreadable, %d without a face (threshold "
        "%.3g) -> %s; timelines in %s",
        len(files), sum(map(is_video, files)), counts["real"], counts["fake"], counts[UNCERTAIN],
        counts["unreadable"], counts["no_face"], scorer.threshold, output, timelines,
    )  # fmt: skip
    if not counts["real"] + counts["fake"] + counts[UNCERTAIN]:
        raise FfdError(f"None of the {len(files)} inputs could be scored; see {output}.")
    return counts


def _rows(files: Sequence[Path], images: Iterator[dict], scorer: Scorer,
          crops: tuple[CropSettings, FaceDetector], cache_dir: Path, cfg: DictConfig,
          timelines: Path, limits: Limits) -> Iterator[dict[str, Any]]:  # fmt: skip
    for n, file in enumerate(files):
        if not is_video(file):
            yield dict.fromkeys(VIDEO_FIELDS, "") | next(images)  # the video columns empty
            continue
        video, frames = score_video(scorer, file, crops[0], cache_dir, cfg.batch_size, cfg.video_aggregate,
                                    limits, crops[1])  # fmt: skip
        if frames:
            write_timeline(timelines / f"{n:04d}_{file.stem}.png", video, frames, scorer.threshold)
        log.info("%s: p_fake %s (%s), %s frames, %s without a face", file, video["p_fake"], video["label"] or
                 video["status"], video["frames"], video["no_face"])  # fmt: skip
        yield from frames
        yield video
