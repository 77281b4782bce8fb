"""Face detection and cropping for photos that are not aligned face crops (OpenCV Haar cascade)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ffd.errors import FfdError

CASCADE = "haarcascade_frontalface_default.xml"


class FaceCropper:
    """Crop the largest frontal face, with a margin, from a photo.

    OpenCV's bundled Haar cascade is fast on a CPU and needs no downloaded
    weights. Training images are aligned, tightly framed faces (CIPLAB), so the
    crop is made square around the detected face and widened by ``margin`` of its
    side on every side to include hair and chin as those images do.

    Args:
        margin: Extra border on each side, as a share of the detected face's side.
        min_face: Smallest face side to detect, as a share of the image's shorter side.
        detect_side: Detection runs on a copy whose longer side is at most this many pixels.
    """

    def __init__(self, margin: float, min_face: float = 0.1, detect_side: int = 640) -> None:
        try:
            import cv2
        except ImportError as err:
            raise FfdError("face_crop=true needs OpenCV: pip install 'opencv-python-headless<5'.") from err
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]
        if self.cascade.empty():
            raise FfdError(
                f"OpenCV {cv2.__version__} has no {CASCADE} (the 5.x wheels ship none): "
                "pip install 'opencv-python-headless<5'."
            )
        self.margin, self.min_face, self.detect_side = margin, min_face, detect_side

    def box(self, img: Image.Image) -> tuple[int, int, int, int] | None:
        """The crop box (left, top, right, bottom) around the largest face, or None."""
        scale = min(1.0, self.detect_side / max(img.size))
        small = img.convert("L")
        if scale < 1:
            small = small.resize(
                (round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR
            )
        side = max(24, round(self.min_face * min(small.size)))
        faces = self.cascade.detectMultiScale(np.asarray(small), 1.1, 5, minSize=(side, side))
        if len(faces) == 0:
            return None
        x, y, w, h = (v / scale for v in max(faces, key=lambda f: f[2] * f[3]))
        half = max(w, h) * (0.5 + self.margin)
        cx, cy = x + w / 2, y + h / 2
        # Clipped to the image: a face at the border gives a narrower crop, not a black band.
        return (
            max(0, round(cx - half)), max(0, round(cy - half)),
            min(img.width, round(cx + half)), min(img.height, round(cy + half)),
        )  # fmt: skip

    def __call__(self, img: Image.Image) -> Image.Image | None:
        """The face crop, or None if no face was found."""
        box = self.box(img)
        return None if box is None else img.crop(box)
