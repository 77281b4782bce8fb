"""Face detection and cropping for photos that are not aligned face crops.

A detector is anything with a ``name`` and ``detect(img) -> list[Face]``;
``make_detector(name)`` builds one by name (see ``DETECTORS``), and
``FaceCropper`` turns the largest face into the square, widened crop that the
training images (aligned, tightly framed CIPLAB faces) look like. Every detector
here runs offline: its model ships inside a pip package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from ffd.data.facts import Box
from ffd.errors import ConfigError, FfdError
from ffd.rules import DETECTORS

log = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"
OPENCV_PIP = "pip install 'opencv-python-headless<5'"
MTCNN_PIP = "pip install requests && pip install --no-deps facenet-pytorch==2.6.0"


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        box: Left, top, right, bottom in the image's pixels: the detector's raw face box, no margin.
        score: The detector's confidence (1.0 where a detector gives none).
    """

    box: Box
    score: float

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceDetector(Protocol):
    """Finds faces in a photo."""

    name: str

    def detect(self, img: Image.Image) -> list[Face]:
        """Every face found in ``img``, largest first."""
        ...


def _shrunk(img: Image.Image, side: int, mode: str) -> tuple[Image.Image, float]:
    """``img`` in ``mode`` with its longer side at most ``side`` (no side under 1 pixel), and the scale
    used (``img`` itself where nothing changes: detectors only read it)."""
    scale = min(1.0, side / max(img.size))
    small = img if img.mode == mode else img.convert(mode)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = small.resize(size, Image.Resampling.BILINEAR)
    return small, scale


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: f.area, reverse=True)


class HaarDetector:
    """OpenCV's bundled frontal-face Haar cascade: fast on a CPU, no score.

    Args:
        min_face: Smallest face side to detect, as a share of the image's shorter side.
        detect_side: Detection runs on a copy whose longer side is at most this many pixels.
    """

    name = "haar"

    def __init__(self, min_face: float = 0.1, detect_side: int = 640) -> None:
        try:
            import cv2
        except ImportError as err:
            raise FfdError(f"The haar face detector needs OpenCV: {OPENCV_PIP}.") from err
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]
        if self.cascade.empty():
            raise FfdError(
                f"OpenCV {cv2.__version__} has no {CASCADE} (the 5.x wheels ship none): {OPENCV_PIP}."
            )
        self.min_face, self.detect_side = min_face, detect_side

    def detect(self, img: Image.Image) -> list[Face]:
        small, scale = _shrunk(img, self.detect_side, "L")
        side = max(24, round(self.min_face * min(small.size)))
        found = self.cascade.detectMultiScale(np.asarray(small), 1.1, 5, minSize=(side, side))
        boxes = [tuple(float(v) / scale for v in (x, y, x + w, y + h)) for x, y, w, h in found]
        return _largest_first([Face(box, 1.0) for box in boxes])  # type: ignore[arg-type]


class MtcnnDetector:
    """MTCNN (three small cascaded CNNs) from facenet-pytorch, whose weights ship in its wheel.

    Not thread-safe (``detect`` sets the model's smallest face per image): use one
    per thread, or a lock, as the service does.

    Args:
        min_face: Smallest face side to detect, as a share of the image's shorter side.
        detect_side: Detection runs on a copy whose longer side is at most this many pixels.
        min_score: Faces the last stage scores below this are dropped.
    """

    name = "mtcnn"

    def __init__(self, min_face: float = 0.1, detect_side: int = 640, min_score: float = 0.9) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise FfdError(
                f"The mtcnn face detector (it finds more faces) needs facenet-pytorch ({err}): "
                f"{MTCNN_PIP} (no deps: its metadata pins an old torch; ffd's torch runs it)."
            ) from err
        self.model = MTCNN(keep_all=True, device="cpu")
        self.min_face, self.detect_side, self.min_score = min_face, detect_side, min_score

    def detect(self, img: Image.Image) -> list[Face]:
        small, scale = _shrunk(img, self.detect_side, "RGB")
        # A larger smallest face means fewer pyramid levels: most of MTCNN's time.
        self.model.min_face_size = max(20, round(self.min_face * min(small.size)))
        if min(small.size) * (12.0 / self.model.min_face_size) < 12:  # facenet-pytorch's own test
            return []  # no face fits: no pyramid level, and facenet-pytorch would raise (torch.cat of none)
        boxes, scores = self.model.detect(small)
        if boxes is None:
            return []
        return _largest_first(
            [
                Face(tuple(float(v) / scale for v in box), float(score))  # type: ignore[arg-type]
                for box, score in zip(boxes, scores, strict=True)
                if score >= self.min_score
            ]
        )


# name -> builder. "auto" builds the first of AUTO_ORDER whose package is installed; the order is
# bench/face_detectors.py's: on generated faces MTCNN finds 92% and Haar 51%, at a similar speed.
_BUILDERS: dict[str, Callable[[], FaceDetector]] = {"haar": HaarDetector, "mtcnn": MtcnnDetector}
AUTO_ORDER: tuple[str, ...] = ("mtcnn", "haar")
assert ("auto", *_BUILDERS) == DETECTORS  # the settings' names (ffd.rules) are the builders


def make_detector(name: str) -> FaceDetector:
    """A face detector by name (one of ``DETECTORS``).

    Args:
        name: ``"auto"`` picks the first of ``AUTO_ORDER`` whose package is installed
            (Haar is the fallback); any other name builds that detector.

    Raises:
        ConfigError: ``name`` is not one of ``DETECTORS``.
        FfdError: The detector's package is not installed; the message has the pip command.
    """
    if name == "auto":
        errors = []
        for candidate in AUTO_ORDER:
            try:
                detector = _BUILDERS[candidate]()
            except FfdError as err:
                errors.append(str(err))
                continue
            if errors:  # a fallback: say which, and how to get the better one
                log.warning("Face detector: %s (auto; %s)", detector.name, " ".join(errors))
            else:
                log.info("Face detector: %s (auto)", detector.name)
            return detector
        raise FfdError("No face detector could be built: " + " ".join(errors))
    if name not in _BUILDERS:
        choices = ", ".join(DETECTORS)
        raise ConfigError(f"face_detector={name!r} is not a face detector: use one of {choices}.")
    return _BUILDERS[name]()


def crop_box(face: Face, margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square crop box (left, top, right, bottom) around ``face``.

    Args:
        face: The detected face.
        margin: Extra border on each side, as a share of the face box's longer side.
        size: The image's (width, height): the box is clipped to it, so a face at the
            border gives a narrower crop rather than a black band.
    """
    left, top, right, bottom = face.box
    half = max(right - left, bottom - top) * (0.5 + margin)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    width, height = size
    return (
        max(0, round(cx - half)), max(0, round(cy - half)),
        min(width, round(cx + half)), min(height, round(cy + half)),
    )  # fmt: skip


class FaceCropper:
    """Crop the largest face, with a margin, from a photo.

    The crop is square around the detected face and widened by ``margin`` of its
    side on every side to include hair and chin, as the training images do.

    Args:
        margin: Extra border on each side, as a share of the detected face's side.
        detector: A detector name (one of ``DETECTORS``) or a ``FaceDetector``.
    """

    def __init__(self, margin: float, detector: str | FaceDetector) -> None:
        self.margin = margin
        self.detector = make_detector(detector) if isinstance(detector, str) else detector

    def box(self, img: Image.Image) -> tuple[int, int, int, int] | None:
        """The crop box (left, top, right, bottom) around the largest face, or None."""
        faces = self.detector.detect(img)
        return crop_box(faces[0], self.margin, img.size) if faces else None

    def __call__(self, img: Image.Image) -> Image.Image | None:
        """The face crop, or None if no face was found."""
        box = self.box(img)
        if box is None or box[2] <= box[0] or box[3] <= box[1]:  # none, or a box outside the image
            return None
        return img.crop(box)
