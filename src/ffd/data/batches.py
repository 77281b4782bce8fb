"""Files -> model-ready batches, for inference: each file decoded once, failures kept in order.

predict, eval, Grad-CAM and the export's parity check all feed a model this way:
every file becomes an ``Item`` (its resized uint8 image, or a status saying why not),
and ``batches`` groups them, in input order, with the normalized tensor of the ones
that decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ffd.data.faces import FaceCropper
from ffd.data.images import DecodedImages
from ffd.data.io import ImageDecodeError, load_rgb
from ffd.data.transforms import resize_transform, view_transform


@dataclass
class Item:
    """One input file: its resized uint8 image (3, size, size), or why there is none.

    Attributes:
        path: The file.
        status: ``ok``, ``unreadable`` or ``no_face``.
        message: Why not ok.
        image: The resized image, for ok items.
        crop: The face crop it was resized from (with a face cropper).
    """

    path: Path
    status: str
    message: str = ""
    image: torch.Tensor | None = None
    crop: Image.Image | None = None


def load_items(
    files: Iterable[str | Path],
    preprocess: Mapping[str, Any],
    cropper: FaceCropper | None = None,
    images: DecodedImages | None = None,
) -> Iterator[Item]:
    """An Item for each file, in order.

    Args:
        files: Image files.
        preprocess: The model's preprocessing (size, interpolation).
        cropper: Crop each photo to its largest face first (status ``no_face`` if none);
            the photo is decoded at full size, as the face may be a small part of it.
        images: Images this run already decoded (the manifest scan's), taken from there.
    """
    resize, size = resize_transform(preprocess), int(preprocess["size"])
    for file in files:
        path = Path(file)
        try:
            if images is not None:
                yield Item(path, "ok", image=images.get(path))
            elif cropper is None:
                yield Item(path, "ok", image=resize(load_rgb(path, size)))
            elif (face := cropper(load_rgb(path, None))) is None:
                yield Item(path, "no_face", "no face found (OpenCV Haar cascade)")
            else:
                yield Item(path, "ok", image=resize(face), crop=face)
        except ImageDecodeError as err:
            yield Item(path, "unreadable", str(err))


def batches(
    items: Iterable[Item], preprocess: Mapping[str, Any], batch_size: int
) -> Iterator[tuple[list[Item], torch.Tensor | None]]:
    """Items grouped in input order, each group with the normalized images of its ok items.

    A group closes when it holds ``batch_size`` ok items; the tensor is None for a
    group with none (the trailing failures).
    """
    view = view_transform(preprocess)
    group: list[Item] = []

    def close() -> tuple[list[Item], torch.Tensor | None]:
        ok = [view(it.image) for it in group if it.image is not None]
        return list(group), torch.stack(ok) if ok else None

    for item in items:
        group.append(item)
        if sum(it.image is not None for it in group) == batch_size:
            yield close()
            group.clear()
    if group:
        yield close()


def ok_images(group: Sequence[Item]) -> list[Item]:
    """The items of a group that have an image, in the order of the group's tensor."""
    return [it for it in group if it.image is not None]
