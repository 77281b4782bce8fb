"""Input files -> decoded pixels: every file becomes an ``Item``, its uint8 RGB pixels or why there are none.

``Decoder`` is the one place a file (or an upload's bytes) becomes the pixels a model takes:
JPEGs are decoded at the smallest DCT scale that still covers the model's input size, other formats
reduced by the integer factor that still covers it (``ffd.data.io.decode_rgb``; files outside the
limits, or in other formats, are refused), a face cropper can crop the largest face first, and images
a run decoded already (``DecodedImages``) are taken from there. Resizing and normalization belong to
the model (``ffd.models.shipped.Preprocess``), so an exported model gets the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ffd.data.faces import FaceCropper
from ffd.data.images import DecodedImages
from ffd.data.io import ImageDecodeError, decode_rgb, read_file
from ffd.data.reencode import Reencode
from ffd.data.settings import Limits


def pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as the uint8 (H, W, 3) tensor a model takes (what ``numpy.asarray`` gives)."""
    if image.mode != "RGB":
        raise ValueError(f"pixels() takes RGB images, not {image.mode}")
    # One copy, writable (numpy.asarray's is read-only, and copying it again costs as much again).
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)


@dataclass
class Item:
    """One input file: its decoded uint8 pixels (H, W, 3), or why there are none.

    Attributes:
        path: The file (for an upload: its name, never opened).
        status: ``ok``, ``unreadable`` or ``no_face``.
        message: Why not ok.
        image: The decoded pixels, for ok items.
        crop: The face crop they were taken from (with a face cropper).
    """

    path: Path
    status: str
    message: str = ""
    image: torch.Tensor | None = None
    crop: Image.Image | None = None


@dataclass(frozen=True)
class Decoder:
    """How files become Items for a model of input side ``size``.

    Attributes:
        size: The model's input side: files are decoded no larger than covers it (``decode_rgb``).
        limits: What a file may be (``limits:`` of conf/common.yaml): beyond, an ``unreadable`` item.
        cropper: Crop each photo to its largest face first (status ``no_face`` if none); the photo
            is decoded at full size (within ``limits``), as the face may be a small part of it.
        kept: Images this run decoded already (the manifest scan's), taken from there.
        reencode: Save each image as a JPEG first (``ffd.data.reencode``; None: as decoded).
    """

    size: int
    limits: Limits
    cropper: FaceCropper | None = None
    kept: DecodedImages | None = None
    reencode: Reencode | None = None

    def __call__(self, file: str | Path) -> Item:
        """The Item of a file on disk (read errors become ``unreadable`` items)."""
        path = Path(file)
        try:
            if self.kept is not None:
                return Item(path, "ok", image=self.kept.get(path))
            data = read_file(path)
        except ImageDecodeError as err:
            return Item(path, "unreadable", str(err))
        return self.decode(path, data)

    def decode(self, path: Path, data: bytes) -> Item:
        """The Item of a file's bytes (``path``: its name, shown in the results)."""
        try:
            if self.cropper is None:
                image = decode_rgb(data, self.size, self.limits)
                image = self.reencode(image, str(path)) if self.reencode else image
                return Item(path, "ok", image=pixels(image))
            if (face := self.cropper(decode_rgb(data, None, self.limits))) is None:
                return Item(path, "no_face", f"no face found ({self.cropper.detector.name} face detector)")
            return Item(path, "ok", image=pixels(face), crop=face)
        except ImageDecodeError as err:
            return Item(path, "unreadable", str(err))
