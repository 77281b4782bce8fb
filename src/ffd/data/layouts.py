"""Finding the images of a data set in any layout ffd knows, with their labels and metadata.

A data set is one folder (or CSV), or the union of several (``data.root`` a list, ``data_roots``).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ffd.data.facts import CIPLAB_FOLDERS, CLASS_NAMES, FAKE, SPLITS, parse_fake_name
from ffd.data.folder_layouts import FAKE_FOLDERS, REAL_FOLDERS, ClassFolder, find_class_folders
from ffd.data.io import image_files
from ffd.data.records import Record
from ffd.data.video.video_layouts import discover_videos
from ffd.errors import ConfigError, FfdError

log = logging.getLogger(__name__)

_SPLIT_NAMES = {"valid": "val", "validation": "val"}  # other spellings of a split
ODD_FAKE_NAME = "name not in CIPLAB's fake scheme: no difficulty or parts"

LAYOUT_HELP = """\
ffd looks for one of these layouts under the data folder:
  CIPLAB (Kaggle ciplab/real-and-fake-face-detection), at any depth:
      <root>/.../training_real/*.jpg  and  <root>/.../training_fake/*.jpg
  a real and a fake class folder side by side, at any depth, named in any case
  real/, nature/ or 0_real/  beside  fake/, ai/, 1_fake/ or synthetic/:
      two class folders:     <root>/real/*  and  <root>/fake/*
      pre-split (kept):      <root>/{train,valid|val,test}/{real,fake}/*   (CIFAKE: {train,test}/{REAL,FAKE})
      GenImage:              <root>/<generator>/{train,val}/{ai,nature}/*  (its val/ is the test split)
      ForenSynths:           <root>/[progan_train/]<category>/{0_real,1_fake}/*, test/<generator>/...
      generator folders side by side name their images' method:  <root>/<method>/...
  a CSV file with columns:  path,label[,split][,method]   (label: real/fake or 0/1)
  several data sets as one: data.root=[DIR1,DIR2]  (a member's folder name is the method of its
      images that have none: {path: DIR, method: NAME, split: test} sets them)
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


def _record(path: Path, label: int, source: str, split: str, method: str = "") -> Record:
    difficulty, parts = parse_fake_name(path) if label == FAKE else ("", "")
    name = os.path.abspath(path)  # the name as found; a symlink's target goes beside it
    try:
        target = str(path.resolve(strict=True))
    except (OSError, RuntimeError):  # broken link or loop: the scan records why
        target = os.readlink(path) if path.is_symlink() else ""
    return Record(
        name, label, source, difficulty, parts, split=split, target="" if target == name else target,
        method=method,
    )  # fmt: skip


def _class_folder(folder: ClassFolder) -> list[Record]:
    files = image_files(folder.path)
    if not files:
        raise DataLayoutError(f"The {CLASS_NAMES[folder.label]} folder {folder.path} holds no images.")
    return [_record(f, folder.label, folder.source, folder.split, folder.method) for f in files]


class CsvError(FfdError, ValueError):
    """A row or the header of a data CSV is wrong (the message names the line and column)."""


def _read_csv(path: Path) -> list[Record]:
    """The rows of a ``path,label[,split][,method]`` CSV (a UTF-8 byte-order mark is fine)."""
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
        cell = {k: (row.get(k) or "").strip() for k in ("path", "label", "split", "method")}
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
        file = file if file.is_absolute() else path.parent / file
        records.append(_record(file, value, "csv", split, cell["method"]))
    return records


@dataclasses.dataclass(frozen=True)
class Member:
    """One folder (or CSV) of a data set made of several (``data.root`` a list).

    Attributes:
        path: The folder or CSV, in any layout ``discover`` knows.
        method: The method of every image in it; empty: each keeps its own (a GenImage generator's
            folder, a CSV's method column), and one without gets the member's ``name``.
        split: The split of every image in it (``test``: a held-out set); empty: its layout's split.
    """

    path: Path
    method: str = ""
    split: str = ""

    @property
    def name(self) -> str:
        """The folder's name (a CSV's: its name without .csv)."""
        path = self.path.resolve()
        return path.stem if path.suffix.lower() == ".csv" else path.name


MEMBER_KEYS = ("path", "method", "split")
DataRoot = str | os.PathLike[str] | Sequence[Any] | Mapping[str, Any]  # what data.root may be


def as_data_root(value: Any) -> DataRoot:
    """A data.root (or eval's ``dataset``) from a config: its lists and mappings as plain Python."""
    if isinstance(value, ListConfig | DictConfig):
        return OmegaConf.to_container(value)  # type: ignore[return-value]
    return value  # type: ignore[no-any-return]


def data_roots(root: DataRoot) -> list[Member] | None:
    """The members of a data set given as a list of folders (or one ``{path, method, split}``), checked;
    None for a single folder or CSV.

    Raises:
        ConfigError: a member is neither a path nor a mapping of MEMBER_KEYS with a path, its split is
            not train, val or test, or one member lies inside another.
    """
    if isinstance(root, str | os.PathLike):
        return None
    if not isinstance(root, Mapping | Sequence) or not root:
        raise ConfigError(
            f"data.root is {root!r}: give a folder or CSV (data.root=DIR), or a list of them "
            "(data.root=[DIR1,DIR2])."
        )
    members = [_member(item, i) for i, item in enumerate([root] if isinstance(root, Mapping) else root)]
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            outer, inner = sorted((a.path.resolve(), b.path.resolve()), key=lambda p: len(p.parts))
            if inner.is_relative_to(outer):
                what = "twice" if inner == outer else f"and {inner} inside it"
                raise ConfigError(
                    f"data.root lists {outer} {what}: its images would count twice. List each folder once."
                )
    return members


def _member(item: Any, i: int) -> Member:
    where = f"data.root[{i}]"
    if isinstance(item, Member):
        return item
    if isinstance(item, str | os.PathLike):
        return Member(Path(item).expanduser())
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where} is {item!r}: give a folder, or {{path: DIR, method: NAME, split: test}}.")
    if unknown := sorted(set(map(str, item)) - set(MEMBER_KEYS)):
        raise ConfigError(f"{where} has the keys {unknown}: a member takes path (needed), method and split.")
    if not item.get("path"):
        raise ConfigError(f"{where} has no path: give its folder as {{path: DIR}}.")
    split = str(item.get("split") or "").lower()
    split = _SPLIT_NAMES.get(split, split)
    if split not in ("", *SPLITS):
        raise ConfigError(f"{where}.split is {item['split']!r}: it must be train, val or test (or left out).")
    return Member(Path(str(item["path"])).expanduser(), str(item.get("method") or ""), split)


def describe(root: DataRoot) -> str:
    """The data set's folder, or its members' folders, for a message."""
    members = data_roots(root)
    return str(root) if members is None else ", ".join(str(m.path) for m in members)


def discover(root: DataRoot) -> list[Record]:
    """Find every image under root in one of the supported layouts (see LAYOUT_HELP).

    ``root`` may be a list of folders (``data_roots``): the union of theirs, each with its own split
    and methods; an image with no method gets its member's name (a member's ``method`` or ``split``,
    when given, is every image's).

    A video data set gives one row per video (``video`` set, ``frame`` None): ``ffd.data.manifest``
    turns each into its face-crop rows.

    Raises:
        DataLayoutError: root is missing, in no known layout, or a class folder is empty.
        ConfigError: a list of folders is not as ``data_roots`` wants it, or two of its members
            with images that have no method share a name.
    """
    members = data_roots(root)
    if members is None:
        return _discover(Path(root).expanduser())  # type: ignore[arg-type]
    records: list[Record] = []
    named: dict[str, Path] = {}  # the members whose name became a method
    for m in members:
        rows = _discover(m.path)
        unnamed = not m.method and any(not r.method for r in rows)
        if unnamed and (other := named.setdefault(m.name, m.path)) != m.path:
            raise ConfigError(
                f"data.root lists two folders named {m.name} ({other} and {m.path}) whose images "
                "have no method of their own: name them, "
                f"data.root=[{{path: {other}, method: A}},{{path: {m.path}, method: B}}]."
            )
        for r in rows:
            r.method = m.method or r.method or m.name
            r.split = m.split or r.split
        records += rows
    methods = Counter(r.method for r in records)
    log.info("%d data sets, %d files; by method: %s", len(members), len(records),
             ", ".join(f"{k} {n}" for k, n in sorted(methods.items())))  # fmt: skip
    return records


def _discover(root: Path) -> list[Record]:
    """``discover`` for one folder or CSV."""
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
    folders = find_class_folders(root)
    if not folders:
        raise DataLayoutError(f"No known image layout under {root}. {_what_is_there(root)}")
    kinds = Counter(f.source for f in folders)
    methods = sorted({f.method for f in folders if f.method})
    log.info("%s: %s%s", root, ", ".join(f"{n} {k} class folders" for k, n in sorted(kinds.items())),
             f"; methods {', '.join(methods)}" if methods else "")  # fmt: skip
    return _note_odd_fake_names([r for f in folders for r in _class_folder(f)])


def _note_odd_fake_names(records: list[Record]) -> list[Record]:
    """Fakes in training_fake/ named outside CIPLAB's scheme stay fakes (their folder says so), with a
    note and a warning."""
    odd = [r for r in records if r.source == "ciplab" and r.label == FAKE and not r.difficulty]
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
    for dirpath, dirnames, _ in os.walk(root):
        at = Path(dirpath).relative_to(root)
        for d in sorted(dirnames):
            for known in CIPLAB_FOLDERS:
                if d != known and d.lower() == known:
                    hints.append(f"{at / d}/ differs from {known}/ only in case: rename it to {known}/.")
        present = [d for d in CIPLAB_FOLDERS if d in dirnames]
        if len(present) == 1:
            missing = next(d for d in CIPLAB_FOLDERS if d not in present)
            hints.append(f"{at / present[0]}/ has no {missing}/ beside it.")
        for have, lack in ((REAL_FOLDERS, FAKE_FOLDERS), (FAKE_FOLDERS, REAL_FOLDERS)):
            for d in sorted(d for d in dirnames if d.lower() in have):
                if not any(e.lower() in lack for e in dirnames):
                    hints.append(f"{at / d}/ has no {' or '.join(f + '/' for f in lack)} beside it.")
    return f"It holds: {shown or 'nothing'}." + "".join(f" {h}" for h in hints[:most])
