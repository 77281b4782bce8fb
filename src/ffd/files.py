"""File helpers shared by data and model code: hashes, atomic writes, durable folder renames."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_text(path: str | Path) -> Iterator[TextIO]:
    """A text file (UTF-8, CSV-ready newlines) written beside ``path`` and renamed onto it once complete
    and on disk: a reader sees the old file or the whole new one, never a part, and a run that fails
    leaves the old one. File names that are not UTF-8 (Python keeps their bytes as surrogate escapes)
    are written as the bytes they are, so a path read back opens the same file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def read_text_lines(path: str | Path) -> TextIO:
    """A text file ffd wrote (``atomic_text``), opened for reading with non-UTF-8 names kept as written."""
    return Path(path).open(newline="", encoding="utf-8", errors="surrogateescape")


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: Path, path: Path) -> None:
    """Rename a finished file into place once its bytes are on disk."""
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.rename(path)
    fsync_dir(path.parent)


def publish_folder(tmp: Path, folder: Path) -> None:
    """Rename a finished folder into place after every file in it is on disk, so a crash can never
    leave a published folder with files missing or cut short."""
    for p in sorted(tmp.rglob("*"), reverse=True):  # files first, then their folders
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(tmp)
    tmp.rename(folder)
    fsync_dir(folder.parent)
