"""Files -> decoded batches, for inference: each file decoded once, failures kept in order.

predict, eval, Grad-CAM and the export's parity check all feed a model this way:
every file becomes an ``Item`` (its decoded uint8 RGB pixels, or a status saying why
not), and ``batches`` groups them, in input order, with the stacked pixels of the
ones that decoded. Resizing and normalization belong to the model
(``ffd.models.inference.Preprocess``), so an exported model gets the same input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from ffd.data.faces import FaceCropper
from ffd.data.images import DecodedImages
from ffd.data.io import ImageDecodeError, decode_rgb, read_file

T = TypeVar("T")


def prefetched(items: Iterable[T]) -> Iterator[T]:
    """The items of an iterable, the next one made in a second thread while the caller works on
    this one: decoding (PIL and libjpeg release the GIL) overlaps the model's forward pass."""
    source = iter(items)
    done = object()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, source, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, source, done)
            yield item  # type: ignore[misc]


def pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as the uint8 (H, W, 3) tensor a model takes (what ``numpy.asarray`` gives)."""
    if image.mode != "RGB":
        raise ValueError(f"pixels() takes RGB images, not {image.mode}")
    # One copy, writable (numpy.asarray's is read-only, and copying it again cost ~0.1 ms an image).
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)


@dataclass
class Item:
    """One input file: its decoded uint8 pixels (H, W, 3), or why there are none.

    Attributes:
        path: The file.
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


def load_items(
    files: Iterable[str | Path],
    preprocess: Mapping[str, Any],
    cropper: FaceCropper | None = None,
    images: DecodedImages | None = None,
) -> Iterator[Item]:
    """An Item for each file, in order.

    JPEGs are decoded at the smallest DCT scale that still covers the model's input
    size (``ffd.data.io.decode_rgb``), as in training.

    Args:
        files: Image files.
        preprocess: The model's preprocessing (its input size).
        cropper: Crop each photo to its largest face first (status ``no_face`` if none);
            the photo is decoded at full size, as the face may be a small part of it.
        images: Images this run already decoded (the manifest scan's), taken from there.
    """
    size = int(preprocess["size"])
    for file in files:
        path = Path(file)
        try:
            if images is not None:
                yield Item(path, "ok", image=images.get(path))
                continue
            data = read_file(path)
        except ImageDecodeError as err:
            yield Item(path, "unreadable", str(err))
            continue
        yield decode_item(path, data, size, cropper)


def decode_item(
    path: Path, data: bytes, size: int, cropper: FaceCropper | None = None, max_pixels: int | None = None
) -> Item:
    """The Item for one file's bytes (see ``load_items``); ``max_pixels`` refuses larger images."""
    try:
        if cropper is None:
            return Item(path, "ok", image=pixels(decode_rgb(data, size, max_pixels)))
        if (face := cropper(decode_rgb(data, None, max_pixels))) is None:
            return Item(path, "no_face", f"no face found ({cropper.detector.name} face detector)")
        return Item(path, "ok", image=pixels(face), crop=face)
    except ImageDecodeError as err:
        return Item(path, "unreadable", str(err))


def batches(items: Iterable[Item], batch_size: int) -> Iterator[tuple[list[Item], torch.Tensor | None]]:
    """Items grouped in input order, each group with the stacked pixels (N, H, W, 3) of its ok items.

    A group closes when it holds ``batch_size`` ok items, or before an image of another
    size; the tensor is None for a group with none (the trailing failures).
    """
    group: list[Item] = []

    def close() -> tuple[list[Item], torch.Tensor | None]:
        ok = [it.image for it in group if it.image is not None]
        return list(group), torch.stack(ok) if ok else None

    shape = None
    for item in items:
        if item.image is not None:
            if shape is not None and item.image.shape != shape:
                yield close()
                group.clear()
            shape = item.image.shape
        group.append(item)
        if sum(it.image is not None for it in group) == batch_size:
            yield close()
            group.clear()
    if group:
        yield close()


def ok_images(group: Sequence[Item]) -> list[Item]:
    """The items of a group that have an image, in the order of the group's tensor."""
    return [it for it in group if it.image is not None]
