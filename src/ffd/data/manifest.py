"""The data manifest: every image a run saw, its label, metadata, content hash and split.

Building it finds the images in any supported layout, of one folder or several
(``ffd.data.layouts``; a video data set's videos become face-crop images first,
``ffd.data.video``), reads each file once to hash it and check that it decodes, drops
exact duplicates, records unreadable files with the reason, and assigns a stratified, seeded split
(``ffd.data.splits``). It is written into every run folder, so eval, predict and the
audits see exactly the split the model was trained and selected on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ffd.data.facts import CLASS_NAMES, SPLITS
from ffd.data.images import DecodedImages
from ffd.data.io import ImageDecodeError, decode_rgb, read_file
from ffd.data.layouts import DataLayoutError, DataRoot, describe, discover
from ffd.data.records import Record
from ffd.data.settings import Limits
from ffd.data.splits import Fold, assign_splits
from ffd.data.video.crops import CropSettings
from ffd.data.video.frames import expand_videos
from ffd.errors import FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)

CHECK_SIZE = 64  # a decode check with nothing to keep: the cheapest JPEG draft still reads the whole scan


class LeakageError(FfdError, RuntimeError):
    """The same image content appears in more than one split."""


def _check(record: Record, images: DecodedImages | None, limits: Limits) -> None:
    try:
        data = read_file(record.path)
        record.sha256 = hashlib.sha256(data).hexdigest()
        image = decode_rgb(data, images.decode_size if images else CHECK_SIZE, limits)
        if images is not None:
            images.add(record.path, image)
    except ImageDecodeError as err:
        record.status, record.reason = "unreadable", str(err)


def check_files(records: Sequence[Record], images: DecodedImages | None, limits: Limits) -> None:
    """Hash every file and mark unreadable ones (missing, empty, corrupt, truncated, not an image).

    Each file is read once: its bytes are hashed and decoded, so a bad file can't crash
    an epoch later. With ``images`` the decoded images are kept for the next step.
    """
    workers = min(8, len(os.sched_getaffinity(0)))  # PIL and hashlib release the GIL
    records = [r for r in records if r.ok]  # a video without a face has its status already
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda r: _check(r, images, limits), records)
        for _ in progress(jobs, "Hashing and checking files", total=len(records), unit="file"):
            pass
    for r in records:
        if not r.ok:
            log.warning("Skipping %s: %s", r.path, r.reason)


def drop_duplicates(records: Sequence[Record]) -> int:
    """Mark every file whose content was already seen (in path order) as a duplicate.

    Returns:
        The number of rows marked.
    """
    first: dict[str, Record] = {}
    dropped = 0
    for r in sorted((r for r in records if r.ok), key=lambda r: r.path):
        kept = first.setdefault(r.sha256, r)
        if kept is not r:
            r.status, r.reason = "duplicate", f"same content as {kept.path}"
            if kept.label != r.label:
                r.reason += f" (labelled {CLASS_NAMES[kept.label]} there)"
            dropped += 1
    return dropped


def check_no_leakage(records: Iterable[Record]) -> None:
    """Raise if one content hash, or the frames of one video, sit in two splits."""
    seen: dict[str, str] = {}
    videos: dict[str, str] = {}
    for r in records:
        if r.ok and r.split:
            other = seen.setdefault(r.sha256, r.split)
            if other != r.split:
                raise LeakageError(f"{r.path} (sha256 {r.sha256[:12]}) is in both {other} and {r.split}.")
            other = videos.setdefault(r.video, r.split) if r.video else r.split
            if other != r.split:
                raise LeakageError(f"Frames of the video {r.video} are in both {other} and {r.split}.")


def scan(
    root: DataRoot,
    limits: Limits,
    images: DecodedImages | None = None,
    video: CropSettings | None = None,
    cache_dir: str | Path | None = None,
) -> list[Record]:
    """Discover the images under root, hash and check each, and mark exact duplicates.

    Args:
        root: The data folder (or CSV), or a list of them (``ffd.data.layouts.data_roots``): one data
            set, whose exact duplicates are dropped across its folders as within one.
        limits: What a file may be: beyond, its row is ``unreadable`` with the reason.
        images: Keep the decoded images there (for a cache's build).
        video: How a video data set's videos become face crops; needed when root holds videos.
        cache_dir: Where the face crops are cached (``<cache_dir>/video-crops/``).

    Raises:
        DataLayoutError: root holds videos and ``video`` or ``cache_dir`` is not given.
    """
    records = discover(root)
    if any(r.video for r in records):
        if video is None or cache_dir is None:
            raise DataLayoutError(
                f"{describe(root)} holds videos: train with data=video "
                "(or pass the video settings and a cache folder)."
            )
        records = expand_videos(records, video, cache_dir, limits)
    check_files(records, images, limits)
    if dropped := drop_duplicates(records):
        log.warning(
            "Dropped %d exact duplicate files (same sha256); see the manifest's reason column.", dropped
        )
    return records


def build_manifest(
    root: DataRoot,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limits: Limits,
    fold: Fold | None = None,
    images: DecodedImages | None = None,
    video: CropSettings | None = None,
    cache_dir: str | Path | None = None,
) -> list[Record]:
    """Scan and split the images under root (``fold``: see ``ffd.data.splits.assign_splits``; ``limits``,
    ``video``, ``cache_dir``: see ``scan``). The crops of a video, and rows sharing a person, share a
    split."""
    records = scan(root, limits, images, video, cache_dir)
    for label, name in enumerate(CLASS_NAMES):
        if not any(r.ok and r.label == label for r in records):
            raise DataLayoutError(f"No readable {name} image under {describe(root)}.")
    assign_splits(records, val_fraction, test_fraction, seed, fold)
    check_no_leakage(records)
    counts = Counter((r.split, CLASS_NAMES[r.label]) for r in records if r.ok)
    log.info(
        "Manifest: %s",
        ", ".join(f"{s} {counts[s, 'real']} real + {counts[s, 'fake']} fake" for s in SPLITS),
    )
    return records
