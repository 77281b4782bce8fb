"""Finding the images of a data set in any layout ffd knows, with their labels and metadata."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ffd.data.facts import CIPLAB_FOLDERS, CLASS_NAMES, FAKE, REAL, SPLITS, parse_fake_name
from ffd.data.io import image_files
from ffd.data.records import Record
from ffd.data.video.video_layouts import discover_videos
from ffd.errors import FfdError

log = logging.getLogger(__name__)

_SPLIT_NAMES = {"valid": "val", "validation": "val"}  # other spellings of a split
ODD_FAKE_NAME = "name not in CIPLAB's fake scheme: no difficulty or parts"

LAYOUT_HELP = """\
ffd looks for one of these layouts under the data folder:
  CIPLAB (Kaggle ciplab/real-and-fake-face-detection), at any depth:
      <root>/.../training_real/*.jpg  and  <root>/.../training_fake/*.jpg
  two class folders:        <root>/real/*  and  <root>/fake/*
  pre-split class folders:  <root>/{train,valid|val,test}/{real,fake}/*
  a CSV file with columns:  path,label   (label: real/fake or 0/1)
  videos (data=video): FaceForensics++ (original_sequences/, manipulated_sequences/),
      Celeb-DF v2 (Celeb-real/, Celeb-synthesis/, YouTube-real/), DFDC (*/metadata.json),
      or <root>/real/*.mp4 and <root>/fake/*.mp4
Get CIPLAB with `ffd data +experiment=seed` (Kaggle credentials needed), or download
https://www.kaggle.com/datasets/ciplab/real-and-fake-face-detection by hand and
unzip it into the data folder (default data/ciplab, or set FFD_DATA_DIR)."""


class DataLayoutError(FfdError, ValueError):
    """The data folder is missing or not laid out as ffd expects."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}\n{LAYOUT_HELP}")


def _record(path: Path, label: int, source: str, split: str) -> Record:
    difficulty, parts = parse_fake_name(path) if label == FAKE else ("", "")
    name = os.path.abspath(path)  # the name as found; a symlink's target goes beside it
    try:
        target = str(path.resolve(strict=True))
    except (OSError, RuntimeError):  # broken link or loop: the scan records why
        target = os.readlink(path) if path.is_symlink() else ""
    return Record(
        name, label, source, difficulty, parts, split=split, target="" if target == name else target
    )


def _class_folder(folder: Path, label: int, source: str, split: str) -> list[Record]:
    files = image_files(folder)
    if not files:
        raise DataLayoutError(f"The {CLASS_NAMES[label]} folder {folder} holds no images.")
    return [_record(f, label, source, split) for f in files]


def _ciplab_roots(root: Path) -> list[Path]:
    """Every folder under root holding both training_real/ and training_fake/."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if all(folder in dirnames for folder in CIPLAB_FOLDERS):
            found.append(Path(dirpath))
    return found


class CsvError(FfdError, ValueError):
    """A row or the header of a data CSV is wrong (the message names the line and column)."""


def _read_csv(path: Path) -> list[Record]:
    """The rows of a ``path,label[,split]`` CSV (a UTF-8 byte-order mark is fine)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return _csv_rows(path, csv.DictReader(fh))
    except UnicodeDecodeError as err:
        raise CsvError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8."
        ) from None
    except csv.Error as err:
        raise CsvError(f"{path} is not a readable CSV: {err}.") from None


def _csv_rows(path: Path, reader: csv.DictReader) -> list[Record]:
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if not {"path", "label"} <= set(columns):
        raise CsvError(
            f"{path} needs a header line with the columns path,label; its first line has {columns}."
        )
    reader.fieldnames = columns
    records = []
    for i, row in enumerate(reader, start=2):
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # a blank line
        cell = {k: (row.get(k) or "").strip() for k in ("path", "label", "split")}
        where = f"{path} line {i}"
        if not cell["path"]:
            raise CsvError(
                f"{where}, column path: empty; give the image's path (relative to the CSV's folder)."
            )
        label = cell["label"].lower()
        if label not in ("0", "1", *CLASS_NAMES):
            found = repr(cell["label"]) if cell["label"] else "empty"
            raise CsvError(f"{where}, column label: {found}; it must be real, fake, 0 or 1.")
        split = _SPLIT_NAMES.get(cell["split"].lower(), cell["split"].lower())
        if split not in ("", *SPLITS):
            raise CsvError(f"{where}, column split: {cell['split']!r} is not train, val or test (or empty).")
        file = Path(cell["path"]).expanduser()
        value = int(label) if label.isdigit() else CLASS_NAMES.index(label)
        records.append(_record(file if file.is_absolute() else path.parent / file, value, "csv", split))
    return records


def discover(root: str | Path) -> list[Record]:
    """Find every image under root in one of the supported layouts (see LAYOUT_HELP).

    A video data set gives one row per video (``video`` set, ``frame`` None): ``ffd.data.manifest``
    turns each into its face-crop rows.

    Raises:
        DataLayoutError: root is missing, in no known layout, or a class folder is empty.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataLayoutError(f"The data folder {root} does not exist.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataLayoutError(f"{root} is a file but not a CSV.")
        return _read_csv(root)
    if (videos := discover_videos(root)) is not None:
        if not videos:
            raise DataLayoutError(f"{root} is laid out as a video data set but holds no videos.")
        return videos
    if ciplab := _ciplab_roots(root):
        if len(ciplab) > 1:
            log.info("Found %d CIPLAB trees under %s: %s", len(ciplab), root, [str(c) for c in ciplab])
        return _note_odd_fake_names(
            [
                r
                for c in ciplab
                for label, folder in enumerate(CIPLAB_FOLDERS)
                for r in _class_folder(c / folder, label, "ciplab", "")
            ]
        )
    split_dirs = ("train", "valid", "val", "test")
    if presplit := [d for d in split_dirs if (root / d / "real").is_dir() and (root / d / "fake").is_dir()]:
        return [
            r
            for d in presplit
            for label, name in enumerate(CLASS_NAMES)
            for r in _class_folder(root / d / name, label, "presplit", _SPLIT_NAMES.get(d, d))
        ]
    if (root / "real").is_dir() and (root / "fake").is_dir():
        return [
            r
            for label, name in ((REAL, "real"), (FAKE, "fake"))
            for r in _class_folder(root / name, label, "folders", "")
        ]
    raise DataLayoutError(f"No known image layout under {root}. {_what_is_there(root)}")


def _note_odd_fake_names(records: list[Record]) -> list[Record]:
    """Fakes named outside CIPLAB's scheme stay fakes (their folder says so), with a note and a warning."""
    odd = [r for r in records if r.label == FAKE and not r.difficulty]
    for r in odd:
        r.reason = ODD_FAKE_NAME
    if odd:
        log.warning(
            "%d of the files in training_fake/ (e.g. %s) are not named {easy|mid|hard}_<n>_<LRNM>.jpg: "
            "used as fakes without a difficulty or replaced parts (see the manifest's reason column).",
            len(odd), Path(odd[0].path).name,
        )  # fmt: skip
    return records


def _what_is_there(root: Path, most: int = 12) -> str:
    """What a folder in no known layout holds, and near misses (a folder name's case, a missing twin)."""
    names = sorted(p.name + "/" if p.is_dir() else p.name for p in root.iterdir())
    shown = ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
    hints = []
    twins = (CIPLAB_FOLDERS, CLASS_NAMES)
    for dirpath, dirnames, _ in os.walk(root):
        at = Path(dirpath).relative_to(root)
        for d in dirnames:
            for known in (*CIPLAB_FOLDERS, *CLASS_NAMES):
                if d != known and d.lower() == known:
                    hints.append(f"{at / d}/ differs from {known}/ only in case: rename it to {known}/.")
        for pair in twins:
            present = [d for d in pair if d in dirnames]
            if len(present) == 1:
                missing = next(d for d in pair if d not in present)
                hints.append(f"{at / present[0]}/ has no {missing}/ beside it.")
    return f"It holds: {shown or 'nothing'}." + "".join(f" {h}" for h in hints[:most])
