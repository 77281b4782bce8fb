"""A video data set's rows expanded into face-crop rows: what makes it an image data set."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ffd.data.faces import Face, FaceDetector, make_detector
from ffd.data.records import Record
from ffd.data.settings import Limits
from ffd.data.video.crops import CropSettings, VideoCrops, extract, resolve_detector
from ffd.data.video.decode import VideoDecodeError
from ffd.progress import progress

log = logging.getLogger(__name__)


def crop_rows(video: Record, crops: VideoCrops) -> list[Record]:
    """One row per face crop of a video (path = the crop), or one row saying why there is none."""
    if not crops.crops:
        reason = f"no face in any of the {len(crops.sampled)} sampled frames"
        return [dataclasses.replace(video, status="no_face", reason=reason, sha256=crops.sha256)]
    return [dataclasses.replace(video, path=str(file), frame=i) for i, file in sorted(crops.crops.items())]


class PerThreadDetector:
    """A face detector whose ``detect`` runs the calling thread's own one, built (by its resolved name) on
    the thread's first detection; ``first``, built already, goes to the first thread that detects.
    Detectors are not thread-safe (MTCNN's smallest face is set per image), and a thread that only reads
    crops from the cache builds none."""

    def __init__(self, name: str, first: FaceDetector | None = None) -> None:
        self.name = name
        self._spare = [first] if first is not None else []
        self._local = threading.local()

    def detect(self, img: Image.Image) -> list[Face]:
        mine = getattr(self._local, "detector", None)
        if mine is None:
            try:
                mine = self._spare.pop()  # atomic: one thread gets it
            except IndexError:
                mine = make_detector(self.name)
            self._local.detector = mine
        return mine.detect(img)


def expand_videos(
    records: Sequence[Record],
    settings: CropSettings,
    cache_dir: str | Path,
    limits: Limits,
    workers: int | None = None,
) -> list[Record]:
    """Replace every video row (``video`` set, no ``frame``) by its face-crop rows; other rows stay.

    Crops come from the cache or are extracted into it (``ffd.data.video.crops``); a video
    that can't be decoded (or is beyond ``limits``) keeps its row, ``unreadable`` with the reason. Each
    thread has its own face detector (a detector is not thread-safe: MTCNN's smallest face is set per
    image), so a video's crops never depend on what another thread was doing. Logs the extraction
    speed (sampled frames per second: decode, detect, track, crop and save). ``workers``: extraction
    threads (None: 4, or fewer on fewer cores).
    """
    videos = [r for r in records if r.video and r.frame is None and r.ok]
    if not videos:
        return list(records)
    settings, first = resolve_detector(settings)
    detector = PerThreadDetector(settings.detector, first)
    extracted: list[int] = []  # sampled frames of the videos extracted now (not from the cache)
    missing: list[int] = []  # sampled frames without the tracked face, per video

    def one(row: Record) -> list[Record]:
        try:
            crops = extract(row.path, settings, cache_dir, limits, detector)
            if crops.seconds:
                extracted.append(len(crops.sampled))
            missing.append(len(crops.no_face))
            return crop_rows(row, crops)
        except VideoDecodeError as err:
            return [dataclasses.replace(row, status="unreadable", reason=str(err))]

    start, expanded = time.perf_counter(), {}
    if workers is None:
        workers = min(4, len(os.sched_getaffinity(0)))  # FFmpeg and OpenCV release the GIL
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(one, videos)
        for row, rows in zip(videos, progress(jobs, "Extracting faces from videos", total=len(videos),
                                              unit="video"), strict=True):  # fmt: skip
            expanded[id(row)] = rows
    out = [r for row in records for r in expanded.get(id(row), [row])]
    _log_summary(videos, out, time.perf_counter() - start, settings, extracted, sum(missing))
    return out


def _log_summary(
    videos: Sequence[Record],
    rows: Sequence[Record],
    seconds: float,
    settings: CropSettings,
    extracted: list[int],
    missing: int,
) -> None:
    crops = sum(1 for r in rows if r.video and r.frame is not None)
    no_face = [r for r in rows if r.status == "no_face"]
    unreadable = [r for r in rows if r.video and r.status == "unreadable"]
    log.info(
        "Videos: %d -> %d face crops (%s frames each, %.2fx face, %d px, detector %s), %d extracted now "
        "(%d frames, %.0f frames/s), %d from the cache, in %.1f s; %d frames without the face, %d videos "
        "without any, %d unreadable",
        len(videos), crops, settings.frames or "all", settings.scale, settings.size, settings.detector,
        len(extracted), sum(extracted), sum(extracted) / max(seconds, 1e-9), len(videos) - len(extracted),
        seconds, missing, len(no_face), len(unreadable),
    )  # fmt: skip
    for r in [*no_face, *unreadable][:5]:
        log.warning("Skipping video %s: %s", r.video, r.reason)
