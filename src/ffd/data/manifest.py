"""The data manifest: every image a run saw, its label, metadata, content hash and split.

Building it finds the images in any supported layout (``ffd.data.layouts``), reads each
file once to hash it and check that it decodes, drops exact duplicates, records
unreadable files with the reason, and assigns a stratified, seeded split
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
from ffd.data.layouts import DataLayoutError, discover
from ffd.data.records import Record
from ffd.data.splits import Fold, assign_splits
from ffd.errors import FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)

CHECK_SIZE = 64  # a decode check with nothing to keep: the cheapest JPEG draft still reads the whole scan


class LeakageError(FfdError, RuntimeError):
    """The same image content appears in more than one split."""


def _check(record: Record, images: DecodedImages | None) -> None:
    try:
        data = read_file(record.path)
        record.sha256 = hashlib.sha256(data).hexdigest()
        image = decode_rgb(data, images.decode_size if images else CHECK_SIZE)
        if images is not None:
            images.add(record.path, image)
    except ImageDecodeError as err:
        record.status, record.reason = "unreadable", str(err)


def check_files(records: Sequence[Record], images: DecodedImages | None) -> None:
    """Hash every file and mark unreadable ones (missing, empty, corrupt, truncated, not an image).

    Each file is read once: its bytes are hashed and decoded, so a bad file can't crash
    an epoch later. With ``images`` the decoded images are kept for the next step.
    """
    workers = min(8, len(os.sched_getaffinity(0)))  # PIL and hashlib release the GIL
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda r: _check(r, images), records)
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
    """Raise if one content hash sits in two splits."""
    seen: dict[str, str] = {}
    for r in records:
        if r.ok and r.split:
            other = seen.setdefault(r.sha256, r.split)
            if other != r.split:
                raise LeakageError(f"{r.path} (sha256 {r.sha256[:12]}) is in both {other} and {r.split}.")


def scan(root: str | Path, images: DecodedImages | None = None) -> list[Record]:
    """Discover the images under root, hash and check each, and mark exact duplicates."""
    records = discover(root)
    check_files(records, images)
    if dropped := drop_duplicates(records):
        log.warning(
            "Dropped %d exact duplicate files (same sha256); see the manifest's reason column.", dropped
        )
    return records


def build_manifest(
    root: str | Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fold: Fold | None = None,
    images: DecodedImages | None = None,
) -> list[Record]:
    """Scan and split the images under root (``fold``: see ``ffd.data.splits.assign_splits``)."""
    records = scan(root, images)
    for label, name in enumerate(CLASS_NAMES):
        if not any(r.ok and r.label == label for r in records):
            raise DataLayoutError(f"No readable {name} image under {root}.")
    assign_splits(records, val_fraction, test_fraction, seed, fold)
    check_no_leakage(records)
    counts = Counter((r.split, CLASS_NAMES[r.label]) for r in records if r.ok)
    log.info(
        "Manifest: %s",
        ", ".join(f"{s} {counts[s, 'real']} real + {counts[s, 'fake']} fake" for s in SPLITS),
    )
    return records
