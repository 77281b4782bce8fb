"""Finding the videos of a data set: FaceForensics++, Celeb-DF v2, DFDC, or real/ + fake/ folders.

Each video becomes one row (``Record`` with ``video`` set and no ``frame``) carrying its
label, manipulation method and the people in it (``identity``, ``+``-joined), which the
split keeps together; ``ffd.data.video.frames`` then expands it into one row per face crop.

- FaceForensics++: ``original_sequences/{youtube,actors}/<compression>/videos/NNN.mp4`` and
  ``manipulated_sequences/<method>/<compression>/videos/TTT_SSS.mp4``; a fake's identity is
  both people (target and source), so a pair shares a split. Its official
  ``splits/{train,val,test}.json`` (lists of id pairs), when found under the root, set the
  split of every video whose people they list.
- Celeb-DF v2: ``Celeb-real/idT_NNNN.mp4``, ``Celeb-synthesis/idT_idS_NNNN.mp4``,
  ``YouTube-real/NNNNN.mp4`` (a ``videos/`` level inside is fine); ``List_of_testing_videos.txt``
  (``<1 real | 0 fake> <relative path>`` a line) is the test split. Videos are grouped by the
  filmed person (the target): the swaps link every celebrity to every other, so grouping by
  both people would put the whole set in one split.
- DFDC: ``dfdc_train_part_N/metadata.json`` mapping each file to ``label`` (REAL/FAKE) and
  ``original``: a fake is grouped with its original.
- ``real/`` + ``fake/`` folders of videos: each video its own group.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from ffd.data.facts import FAKE, REAL, SPLITS
from ffd.data.io import image_files
from ffd.data.records import Record
from ffd.data.video.decode import is_video, video_files
from ffd.errors import FfdError

log = logging.getLogger(__name__)

FFPP_DIRS = ("original_sequences", "manipulated_sequences")
CELEBDF_DIRS = ("Celeb-real", "Celeb-synthesis", "YouTube-real")
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
DFDC_METADATA = "metadata.json"


class VideoLayoutError(FfdError, ValueError):
    """A video data set's files or lists are not as its layout says."""


def _row(path: Path, label: int, source: str, method: str, identity: str, split: str) -> Record:
    name = os.path.abspath(path)
    return Record(name, label, source, split=split, video=name, method=method, identity=identity)


def _ffpp_people(stem: str, actors: bool) -> list[str]:
    """People in an FF++ video, from its name: ``000``, ``000_003``, DFD's ``01__x``, ``01_02__x__y``."""
    ids = stem.split("__")[0].split("_")
    return [f"actor{i}" if actors else i for i in ids]


def _ffpp_official_splits(root: Path) -> dict[str, str]:
    """id -> split from FF++'s train/val/test.json (each a list of [target, source] pairs), if present."""
    for folder in (root / "splits", root):
        files = {s: folder / f"{s}.json" for s in SPLITS}
        if all(f.is_file() for f in files.values()):
            split_of: dict[str, str] = {}
            for split, file in files.items():
                try:
                    pairs = json.loads(file.read_text())
                    for pair in pairs:
                        for person in pair:
                            split_of[str(person)] = split
                except (ValueError, TypeError) as err:
                    raise VideoLayoutError(
                        f'{file} is not FF++\'s split format (a JSON list of ["000", "003"] pairs): {err}.'
                    ) from None
            log.info("Using FF++'s official split files in %s (%d people)", folder, len(split_of))
            return split_of
    return {}


def _ffpp(root: Path) -> list[Record]:
    split_of = _ffpp_official_splits(root)
    rows = []
    for kind, label in (("original_sequences", REAL), ("manipulated_sequences", FAKE)):
        for group in sorted(p for p in (root / kind).glob("*") if p.is_dir()):
            for video in video_files(group):
                actors = group.name in ("actors", "DeepFakeDetection")
                people = _ffpp_people(video.stem, actors)
                splits = {split_of.get(p, "") for p in people}
                split = splits.pop() if len(splits) == 1 else ""
                method = "original" if label == REAL else group.name
                rows.append(_row(video, label, "ffpp", method, "+".join(people), split))
    return rows


_CELEB_NAME = re.compile(r"^(id\d+)(?:_(id\d+))?_\d+$")


def _celebdf(root: Path) -> list[Record]:
    tests: dict[str, int] = {}
    listing = root / CELEBDF_TEST_LIST
    if listing.is_file():
        for n, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                raise VideoLayoutError(
                    f"{listing} line {n}: {line!r}; each line must be '<1 for real, 0 for fake> <path>'."
                )
            tests[parts[1].replace("/videos/", "/")] = REAL if parts[0] == "1" else FAKE
    rows = []
    for folder in CELEBDF_DIRS:
        for video in video_files(root / folder) if (root / folder).is_dir() else []:
            label = FAKE if folder == "Celeb-synthesis" else REAL
            m = _CELEB_NAME.match(video.stem)
            person = m.group(1) if m else f"{folder}/{video.stem}"  # YouTube-real: one person per video
            key = f"{folder}/{video.name}"
            if key in tests and tests[key] != label:
                raise VideoLayoutError(f"{listing} labels {key} {'real' if tests[key] == REAL else 'fake'}, "
                                       f"but {folder}/ holds {'fakes' if label else 'reals'}.")  # fmt: skip
            method = "celebdf" if label == FAKE else "original"
            rows.append(_row(video, label, "celebdf", method, person, "test" if key in tests else ""))
    return rows


def _dfdc(metadata_files: list[Path]) -> list[Record]:
    rows = []
    for meta_file in metadata_files:
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as err:
            raise VideoLayoutError(f"{meta_file} is not JSON: {err}.") from None
        for name, entry in sorted(meta.items()):
            label = str(entry.get("label", "")).upper()
            if label not in ("REAL", "FAKE"):
                raise VideoLayoutError(f"{meta_file}: {name} has label {entry.get('label')!r}; "
                                       "DFDC's labels are REAL or FAKE.")  # fmt: skip
            video = meta_file.parent / name
            if not video.is_file():
                log.warning("%s lists %s, which is not there: skipped", meta_file, name)
                continue
            original = Path(entry.get("original") or name).stem
            y = FAKE if label == "FAKE" else REAL
            rows.append(_row(video, y, "dfdc", "dfdc" if y == FAKE else "original", original, ""))
    return rows


def _folders(root: Path) -> list[Record]:
    rows = []
    for label, name in ((REAL, "real"), (FAKE, "fake")):
        videos = video_files(root / name)
        if not videos:
            raise VideoLayoutError(f"The {name} folder {root / name} holds no videos.")
        rows += [_row(v, label, "videos", "" if label == REAL else "fake", "", "") for v in videos]
    return rows


def discover_videos(root: Path) -> list[Record] | None:
    """The videos under root, one row each, or None if root is in no video layout (see the module doc)."""
    if any((root / d).is_dir() for d in FFPP_DIRS):
        return _ffpp(root)
    if any((root / d).is_dir() for d in CELEBDF_DIRS):
        return _celebdf(root)
    # DFDC's parts are dfdc_train_part_N/ (any folder named dfdc*), each with its metadata.json.
    found = [root / DFDC_METADATA, *root.glob(f"dfdc*/{DFDC_METADATA}")]
    if metadata := sorted(p for p in found if p.is_file()):
        return _dfdc(metadata)
    real, fake = root / "real", root / "fake"
    if real.is_dir() and fake.is_dir() and not image_files(real) and any(map(is_video, real.rglob("*"))):
        return _folders(root)
    return None
