"""The manifest's rows and its CSV file: one table of every image a run saw."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable
from pathlib import Path

from ffd.files import atomic_text, read_text_lines


@dataclasses.dataclass
class Record:
    """One row of the manifest.

    Attributes:
        path: Absolute path of the image file, as found (symlinks not followed).
        label: REAL (0) or FAKE (1).
        source: Layout the file came from (ciplab, genimage, forensynths, presplit, folders, csv; a
            video data set's: ffpp, celebdf, dfdc, videos).
        difficulty: CIPLAB fake difficulty (easy/mid/hard); empty otherwise.
        parts: CIPLAB replaced-part bits LRNM ("1010"); empty otherwise.
        sha256: Hash of the file's bytes.
        split: train, val or test; empty for rows not used.
        status: ok, duplicate or unreadable.
        reason: Why a row is not ok (or, on an ok row, a note such as a fake name outside
            CIPLAB's scheme).
        target: Where ``path`` leads when a symlink is on the way (resolved); empty otherwise.
        video: The video a face crop came from (its path); empty for images.
        frame: The crop's frame index in that video; None for images (and a video's own row).
        method: The generator or manipulation method: a video data set's (``original`` for reals); of an
            image, the folder its class folders sit in (GenImage's ``<generator>/``, ForenSynths'
            ``test/<generator>/`` or ``progan_train/``: ``ffd.data.folder_layouts``), a CSV's method
            column, or the name of its folder in a list of data folders. Reals in such a folder carry
            it too. Empty otherwise (CIPLAB's fakes: all Photoshop).
        identity: The people in the video, ``+``-joined (FF++: target+source); the split keeps
            every row sharing a person together. Empty when unknown.
    """

    path: str
    label: int
    source: str
    difficulty: str = ""
    parts: str = ""
    sha256: str = ""
    split: str = ""
    status: str = "ok"
    reason: str = ""
    target: str = ""
    video: str = ""
    frame: int | None = None
    method: str = ""
    identity: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


COLUMNS = [f.name for f in dataclasses.fields(Record)]


def write_manifest(records: Iterable[Record], path: str | Path) -> None:
    """The manifest, in place of the old one once complete (``ffd.files.atomic_text``: a file name that is
    not UTF-8 keeps its bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in records)


def read_manifest(path: str | Path) -> list[Record]:
    """A manifest's rows (one written before a column existed gets its default)."""
    with read_text_lines(path) as fh:
        rows = list(csv.DictReader(fh))
    return [Record(**{k: _value(k, v) for k, v in row.items()}) for row in rows]  # type: ignore[arg-type]


def _value(column: str, text: str) -> int | str | None:
    if column == "label":
        return int(text)
    if column == "frame":
        return int(text) if text else None
    return text
