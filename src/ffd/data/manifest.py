"""The data manifest: one table of every image a run saw, its label, metadata and split.

Discovery finds the images in any supported layout, hashes their contents,
drops exact duplicates, records unreadable files with the reason, and assigns
a stratified, seeded train/val/test split. The manifest is written into every
run folder so later tasks (eval, predict, audits) see exactly the same split.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ffd.data.io import IMAGE_SUFFIXES, ImageDecodeError, load_rgb
from ffd.errors import ConfigError, FfdError
from ffd.files import sha256_file

log = logging.getLogger(__name__)

# Labels, written once: "positive" means fake.
REAL, FAKE = 0, 1
CLASS_NAMES = ("real", "fake")
# CIPLAB fake names: {easy|mid|hard}_{id}_{LRNM}, one bit per replaced part, image-left first.
PARTS = ("left_eye", "right_eye", "nose", "mouth")
DIFFICULTIES = ("easy", "mid", "hard")
FAKE_NAME = re.compile(r"^(easy|mid|hard)_(\d+)_([01]{4})$")
SPLITS = ("train", "val", "test")
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


class LeakageError(FfdError, RuntimeError):
    """The same image content appears in more than one split."""


@dataclasses.dataclass
class Record:
    """One row of the manifest.

    Attributes:
        path: Absolute path of the image file.
        label: REAL (0) or FAKE (1).
        source: Layout the file came from (ciplab, folders, presplit, csv).
        difficulty: CIPLAB fake difficulty (easy/mid/hard); empty otherwise.
        parts: CIPLAB replaced-part bits LRNM ("1010"); empty otherwise.
        sha256: Hash of the file's bytes.
        split: train, val or test; empty for rows not used.
        status: ok, duplicate or unreadable.
        reason: Why a row is not ok.
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


COLUMNS = [f.name for f in dataclasses.fields(Record)]


def replaced_parts(bits: str) -> list[str]:
    """Part names from CIPLAB part bits (left eye, right eye, nose, mouth), e.g. ``"1010"``."""
    return [part for part, bit in zip(PARTS, bits, strict=True) if bit == "1"] if bits else []


def parse_fake_name(path: str | Path) -> tuple[str, str]:
    """Difficulty and part bits of a CIPLAB fake file name, or ("", "") if it has none."""
    m = FAKE_NAME.match(Path(path).stem)
    return (m.group(1), m.group(3)) if m else ("", "")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_folder(folder: Path, label: int, source: str, split: str = "") -> list[Record]:
    files = _images(folder)
    if not files:
        raise DataLayoutError(f"The {CLASS_NAMES[label]} folder {folder} holds no images.")
    records = []
    for f in files:
        difficulty, parts = parse_fake_name(f) if label == FAKE else ("", "")
        records.append(Record(str(f.resolve()), label, source, difficulty, parts, split=split))
    return records


def _ciplab_roots(root: Path) -> list[Path]:
    """Every folder under root holding both training_real/ and training_fake/."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if "training_real" in dirnames and "training_fake" in dirnames:
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
            file = file if file.is_absolute() else path.parent / file
            difficulty, parts = parse_fake_name(file) if value == FAKE else ("", "")
            split = (row.get("split") or "").strip().lower()
            split = _SPLIT_NAMES.get(split, split)
            if split not in ("", *SPLITS):
                raise DataLayoutError(f"{path} line {i}: split {row['split']!r} is not train/val/test.")
            records.append(Record(str(file.resolve()), value, "csv", difficulty, parts, split=split))
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
    ciplab = _ciplab_roots(root)
    if ciplab:
        if len(ciplab) > 1:
            log.info("Found %d CIPLAB trees under %s: %s", len(ciplab), root, [str(c) for c in ciplab])
        return [
            r
            for c in ciplab
            for r in _class_folder(c / "training_real", REAL, "ciplab")
            + _class_folder(c / "training_fake", FAKE, "ciplab")
        ]
    split_dirs = ("train", "valid", "val", "test")
    presplit = [d for d in split_dirs if (root / d / "real").is_dir() and (root / d / "fake").is_dir()]
    if presplit:
        return [
            r
            for d in presplit
            for label, name in enumerate(CLASS_NAMES)
            for r in _class_folder(root / d / name, label, "presplit", _SPLIT_NAMES.get(d, d))
        ]
    if (root / "real").is_dir() and (root / "fake").is_dir():
        return _class_folder(root / "real", REAL, "folders") + _class_folder(root / "fake", FAKE, "folders")
    raise DataLayoutError(f"No known image layout under {root}.")


def check_files(records: Iterable[Record]) -> None:
    """Hash every file and mark unreadable ones (missing, empty, corrupt, truncated, not an image).

    Decoding each file once here is what keeps a bad file from crashing an epoch.
    """
    for r in records:
        try:
            r.sha256 = sha256_file(r.path)
            load_rgb(r.path, min_size=64)  # draft decode: reads the whole JPEG scan, cheaply
        except ImageDecodeError as err:
            r.status, r.reason = "unreadable", str(err)
        except OSError as err:
            r.status, r.reason = "unreadable", f"cannot read the file: {err}"
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


def assign_splits(
    records: Sequence[Record], val: float, test: float, seed: int, cv: tuple[int, int] | None = None
) -> None:
    """Stratified, seeded train/val/test split of the ok rows without a split.

    Strata are (label, difficulty), so every split sees each CIPLAB difficulty in
    proportion. Rows are ordered by content hash before shuffling: the split
    depends on the data and the seed only, not on file names or disk order.

    With ``cv=(k, i)`` the test rows are the same as without it, and the rest is
    dealt into k stratified folds: fold i is val, the others train (``val`` is unused).
    """
    if cv is not None:
        k, i = cv
        if not (k >= 2 and 0 <= i < k):
            raise ConfigError(
                f"Cross-validation needs folds >= 2 and 0 <= fold < folds (got {k} folds, fold {i})."
            )
        if any(r.split for r in records if r.ok):
            raise ConfigError(
                "Cross-validation deals its own folds, but this data set comes pre-split "
                "(split folders or a split column); train without cv.folds."
            )
        val = 0.0
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"val ({val}) and test ({test}) fractions must be >= 0 and sum below 1.")
    strata: dict[tuple[int, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.ok and not r.split:
            strata[(r.label, r.difficulty)].append(r)
    rng = np.random.default_rng(seed)
    for key in sorted(strata):
        rows = sorted(strata[key], key=lambda r: r.sha256)
        order = rng.permutation(len(rows))
        n_test, n_val = round(len(rows) * test), round(len(rows) * val)
        for rank, j in enumerate(order):
            if rank < n_test:
                rows[j].split = "test"
            elif cv is not None:
                rows[j].split = "val" if (rank - n_test) % cv[0] == cv[1] else "train"
            else:
                rows[j].split = "val" if rank < n_test + n_val else "train"


def check_no_leakage(records: Iterable[Record]) -> None:
    """Raise if one content hash sits in two splits."""
    seen: dict[str, str] = {}
    for r in records:
        if r.ok and r.split:
            other = seen.setdefault(r.sha256, r.split)
            if other != r.split:
                raise LeakageError(f"{r.path} (sha256 {r.sha256[:12]}) is in both {other} and {r.split}.")


def scan(root: str | Path) -> list[Record]:
    """Discover the images under root, hash and check each, and mark exact duplicates."""
    records = discover(root)
    check_files(records)
    if dropped := drop_duplicates(records):
        log.warning(
            "Dropped %d exact duplicate files (same sha256); see the manifest's reason column.", dropped
        )
    return records


def build_manifest(
    root: str | Path, val: float = 0.15, test: float = 0.15, seed: int = 42, cv: tuple[int, int] | None = None
) -> list[Record]:
    """Scan and split the images under root (``cv``: see assign_splits)."""
    records = scan(root)
    for label, name in enumerate(CLASS_NAMES):
        if not any(r.ok and r.label == label for r in records):
            raise DataLayoutError(f"No readable {name} image under {root}.")
    assign_splits(records, val, test, seed, cv)
    check_no_leakage(records)
    counts = Counter((r.split, CLASS_NAMES[r.label]) for r in records if r.ok)
    log.info(
        "Manifest: %s",
        ", ".join(f"{s} {counts[s, 'real']} real + {counts[s, 'fake']} fake" for s in SPLITS),
    )
    return records


def write_manifest(records: Iterable[Record], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in records)


def read_manifest(path: str | Path) -> list[Record]:
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Record(**{k: int(v) if k == "label" else v for k, v in row.items()}) for row in rows]  # type: ignore[arg-type]


def shuffled_labels(records: Sequence[Record], seed: int) -> list[Record]:
    """Copies of records with their labels permuted (seeded): the label-shuffle control."""
    labels = np.random.default_rng([seed, 1]).permutation([r.label for r in records])
    return [dataclasses.replace(r, label=int(y)) for r, y in zip(records, labels, strict=True)]
