"""Finding the images of a data set in any layout ffd knows, with their labels and metadata."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ffd.data.facts import CIPLAB_FOLDERS, CLASS_NAMES, FAKE, REAL, SPLITS, parse_fake_name
from ffd.data.io import IMAGE_SUFFIXES
from ffd.data.records import Record
from ffd.errors import FfdError

log = logging.getLogger(__name__)

_SPLIT_NAMES = {"valid": "val", "validation": "val"}  # other spellings of a split

LAYOUT_HELP = """\
ffd looks for one of these layouts under the data folder:
  CIPLAB (Kaggle ciplab/real-and-fake-face-detection), at any depth:
      <root>/.../training_real/*.jpg  and  <root>/.../training_fake/*.jpg
  two class folders:        <root>/real/*  and  <root>/fake/*
  pre-split class folders:  <root>/{train,valid|val,test}/{real,fake}/*
  a CSV file with columns:  path,label   (label: real/fake or 0/1)
Get CIPLAB with `make data` (Kaggle credentials needed), or download
https://www.kaggle.com/datasets/ciplab/real-and-fake-face-detection by hand and
unzip it into the data folder (default data/ciplab, or set FFD_DATA_DIR)."""


class DataLayoutError(FfdError, ValueError):
    """The data folder is missing or not laid out as ffd expects."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}\n{LAYOUT_HELP}")


def _record(path: Path, label: int, source: str, split: str = "") -> Record:
    difficulty, parts = parse_fake_name(path) if label == FAKE else ("", "")
    return Record(str(path.resolve()), label, source, difficulty, parts, split=split)


def _class_folder(folder: Path, label: int, source: str, split: str = "") -> list[Record]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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


def _read_csv(path: Path) -> list[Record]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataLayoutError(f"{path} needs the columns path,label; it has {reader.fieldnames}.")
        records = []
        for i, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            if label not in ("0", "1", *CLASS_NAMES):
                raise DataLayoutError(f"{path} line {i}: label {row['label']!r} is not real/fake/0/1.")
            value = int(label) if label.isdigit() else CLASS_NAMES.index(label)
            file = Path(row["path"])
            split = (row.get("split") or "").strip().lower()
            split = _SPLIT_NAMES.get(split, split)
            if split not in ("", *SPLITS):
                raise DataLayoutError(f"{path} line {i}: split {row['split']!r} is not train/val/test.")
            records.append(_record(file if file.is_absolute() else path.parent / file, value, "csv", split))
    return records


def discover(root: str | Path) -> list[Record]:
    """Find every image under root in one of the supported layouts (see LAYOUT_HELP).

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
    if ciplab := _ciplab_roots(root):
        if len(ciplab) > 1:
            log.info("Found %d CIPLAB trees under %s: %s", len(ciplab), root, [str(c) for c in ciplab])
        return [
            r
            for c in ciplab
            for label, folder in enumerate(CIPLAB_FOLDERS)
            for r in _class_folder(c / folder, label, "ciplab")
        ]
    split_dirs = ("train", "valid", "val", "test")
    if presplit := [d for d in split_dirs if (root / d / "real").is_dir() and (root / d / "fake").is_dir()]:
        return [
            r
            for d in presplit
            for label, name in enumerate(CLASS_NAMES)
            for r in _class_folder(root / d / name, label, "presplit", _SPLIT_NAMES.get(d, d))
        ]
    if (root / "real").is_dir() and (root / "fake").is_dir():
        return _class_folder(root / "real", REAL, "folders") + _class_folder(root / "fake", FAKE, "folders")
    raise DataLayoutError(f"No known image layout under {root}.")
