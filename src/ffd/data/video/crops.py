"""Face crops of a video's sampled frames, cached on disk.

A video's crops live in ``<cache_dir>/video-crops/<video sha256>-<settings key>/``: one
PNG per frame with a face (``NNNNN.png``, the frame index) and ``index.json`` (what was
sampled, which frames had no face, the boxes). The key covers everything that shapes
the crops (frames, stride, scale, size, detector), so changing one never reads a stale
crop, and the same video under another name is extracted once. One process extracts a
key while others wait on its lock file; the crops are written into a temporary folder
renamed into place when complete, so a killed extraction leaves nothing a later run
trusts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from filelock import FileLock
from PIL import Image

from ffd.data.faces import FaceDetector, crop_box, make_detector
from ffd.data.settings import Limits
from ffd.data.video.decode import Source, VideoDecodeError, decoded_frames, probe, sample_indices
from ffd.data.video.track import Tracker
from ffd.errors import FfdError

log = logging.getLogger(__name__)

INDEX = "index.json"  # the extraction's last file
FOLDER = "video-crops"


@dataclasses.dataclass(frozen=True)
class CropSettings:
    """How a video becomes face crops (``data.video`` in conf/data/video.yaml).

    Attributes:
        frames: Frames sampled per video (evenly over it; DeepfakeBench: 32); None = all.
        stride: Keep every stride-th frame instead (the first ``frames`` of them); None = even.
        scale: Crop side over the detected face's side (FF++: 1.3).
        size: Crops are saved as size x size PNGs.
        detector: Face detector name (``ffd.data.faces.DETECTORS``).
    """

    frames: int | None
    stride: int | None
    scale: float
    size: int
    detector: str

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> CropSettings:
        return cls(**{f.name: node[f.name] for f in dataclasses.fields(cls)})

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass
class VideoCrops:
    """One video's extraction.

    Attributes:
        sha256: The video file's hash.
        sampled: The sampled frame indices.
        crops: Frame index -> crop file, for the frames with a face.
        no_face: Sampled frames in which the tracked face was not found.
        seconds: How long the extraction took (0 when it came from the cache).
    """

    sha256: str
    sampled: list[int]
    crops: dict[int, Path]
    no_face: list[int]
    seconds: float = 0.0


def run_crop_settings(training_run: Path) -> CropSettings | None:
    """The settings the crops of a training run's manifest were made with (each crop folder's index
    records them), or None for a run on images (or one whose manifest is gone)."""
    manifest = training_run / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r.get("video") and r.get("frame")), None)
    index = Path(row["path"]).parent / INDEX if row else None
    if index is None or not index.is_file():
        return None
    return CropSettings.from_config(json.loads(index.read_text())["settings"])


def model_crop_settings(
    configured: Mapping[str, Any], as_trained: bool, training_run: Path | None
) -> CropSettings:
    """How a model's videos are cropped: as its training run did when ``as_trained`` and the model was
    trained on videos (so its numbers reproduce), else ``configured`` (``video:`` of the task's config)."""
    if as_trained and training_run is not None and (settings := run_crop_settings(training_run)) is not None:
        log.info("Video frames and face crops as in the model's training run: %s", settings)
        return settings
    return CropSettings.from_config(configured)


def resolve_detector(settings: CropSettings) -> tuple[CropSettings, FaceDetector]:
    """The detector the settings name, and the settings naming the one built: the crops are keyed by
    the detector that ran (``auto`` may build another one on another machine)."""
    detector = make_detector(settings.detector)
    return dataclasses.replace(settings, detector=detector.name), detector


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def face_crops(
    path: Source,
    settings: CropSettings,
    detector: FaceDetector,
    limits: Limits,
    cancel: threading.Event | None = None,
) -> tuple[list[int], dict[int, Image.Image], dict[int, list[float]]]:
    """Sampled indices, the tracked face's crop of each frame that has one, and its detected box.

    The video is checked against ``limits`` before any frame is decoded, then decoded once up to the last
    sampled frame; each sampled frame is detected, tracked and cropped as it is decoded, and only its crop
    is kept. The sampled indices are those the video has (fewer when it holds fewer frames than its
    container says).

    Raises:
        VideoDecodeError: not a video ffd reads, unreadable, beyond ``limits``, or ``cancel`` was set
            (checked between frames).
    """
    info = probe(path, limits, cancel)
    sampled = sample_indices(info.frames, settings.frames, settings.stride)
    if not sampled:
        raise VideoDecodeError("not a readable video: it has no frames")
    margin = (settings.scale - 1) / 2  # crop_box widens each side by margin x the face's side
    tracker = Tracker()
    decoded: list[int] = []
    crops, boxes = {}, {}
    for i, array in decoded_frames(path, sampled, limits, cancel):
        decoded.append(i)
        img = Image.fromarray(array)
        face = tracker.update(detector.detect(img))
        if face is not None:
            box = crop_box(face, margin, img.size)
            crops[i] = img.crop(box).resize((settings.size, settings.size), Image.Resampling.BICUBIC)
            boxes[i] = [round(v, 2) for v in face.box]
    if not decoded:
        raise VideoDecodeError("not a readable video: none of its frames could be decoded")
    return decoded, crops, boxes


def extract(
    path: str | Path,
    settings: CropSettings,
    cache_dir: str | Path,
    limits: Limits,
    detector: FaceDetector | None = None,
    cancel: threading.Event | None = None,
) -> VideoCrops:
    """A video's face crops: from the cache, or extracted into it (``face_crops``; ``cancel`` stops it).

    Raises:
        VideoDecodeError: the file can't be read or decoded as a video.
        FfdError: the cache folder can't be written.
    """
    try:
        sha = file_sha256(path)
    except FileNotFoundError:
        raise VideoDecodeError("no such file") from None
    except OSError as err:
        raise VideoDecodeError(f"cannot read the file: {err.strerror or err}") from err
    folder = Path(cache_dir) / FOLDER / f"{sha[:24]}-{settings.key()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder.with_name(folder.name + ".lock"))
        lock.acquire()
    except OSError as err:
        raise FfdError(
            f"Can't write video crops into {folder.parent} ({err.strerror or err}): set paths.cache_dir "
            "to a writable folder."
        ) from err
    try:
        seconds = 0.0
        if not (folder / INDEX).exists():
            start = time.perf_counter()
            detector = detector or make_detector(settings.detector)
            _extract_atomically(path, settings, detector, folder, sha, limits, cancel)
            seconds = time.perf_counter() - start
    finally:
        lock.release()
    index = json.loads((folder / INDEX).read_text())
    crops = {int(i): folder / name for i, name in index["crops"].items()}
    return VideoCrops(sha, index["sampled"], crops, index["no_face"], seconds)


def _extract_atomically(path: str | Path, settings: CropSettings, detector: FaceDetector, folder: Path,
                        sha: str, limits: Limits, cancel: threading.Event | None = None) -> None:  # fmt: skip
    """Write the crops into ``<folder>.partial-<pid>``, then rename it to ``folder`` (under the lock).

    Every file and the temporary folder are fsynced before the rename, and the parent folder after it,
    so a crash (of the machine, not only the process) leaves either the complete folder or none.
    """
    for stale in [folder, *folder.parent.glob(folder.name + ".partial-*")]:  # a killed extraction's
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir()
        sampled, crops, boxes = face_crops(path, settings, detector, limits, cancel)
        index = {
            "video": str(path), "sha256": sha, "settings": dataclasses.asdict(settings), "sampled": sampled,
            "crops": {str(i): f"{i:05d}.png" for i in crops}, "boxes": {str(i): b for i, b in boxes.items()},
            "no_face": [i for i in sampled if i not in crops],
        }  # fmt: skip
        try:
            for i, crop in crops.items():
                with (tmp / f"{i:05d}.png").open("wb") as fh:
                    crop.save(fh, "PNG")
                    _fsync(fh)
            with (tmp / INDEX).open("w") as fh:
                fh.write(json.dumps(index))
                _fsync(fh)
            _fsync_folder(tmp)
            tmp.rename(folder)
            _fsync_folder(folder.parent)
        except OSError as err:
            raise FfdError(
                f"Can't write video crops into {folder.parent} ({err.strerror or err}): set paths.cache_dir "
                "to a writable folder with free space."
            ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(fh: IO) -> None:
    """The open file's bytes on the disk."""
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_folder(folder: Path) -> None:
    """The folder's entries (names created or renamed in it) on the disk; POSIX only (Windows can't open
    a folder, and its renames are not made durable this way)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
