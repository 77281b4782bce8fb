"""Decoded images kept in memory between the steps of one run, so each file is decoded once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ffd.data.io import load_rgb
from ffd.data.reencode import Reencode
from ffd.data.settings import Limits

# Kept images stop here (a resized 224 px image is 150 KB, a 300 px draft decode 270 KB: CIPLAB's
# 2,041 take 0.3 or 0.55 GiB);
# past it, the next step decodes the file again.
BUDGET_BYTES = 2 << 30


class DecodedImages:
    """The images of the files already decoded in this run, as the next step takes them (``resize``:
    training's resized uint8 (3, size, size); eval's decoded pixels (H, W, 3)).

    The manifest scan decodes every file to check it and puts the result here; the
    next step (the feature or pixel cache build, eval's scoring) takes it from here
    instead of reading and decoding the file again.

    Args:
        resize: Decoded image -> the tensor kept (resized for training, raw pixels for eval).
        decode_size: The JPEG draft size the consumer decodes at (None: full size).
        limits: What a file may be (``ffd.data.settings.Limits``).
        reencode: Save each image as a JPEG first (``ffd.data.reencode``; None: as decoded).
    """

    def __init__(
        self,
        resize: Callable[[Image.Image], torch.Tensor],
        decode_size: int | None,
        limits: Limits,
        reencode: Reencode | None = None,
    ) -> None:
        self.resize, self.decode_size, self.limits, self.reencode = resize, decode_size, limits, reencode
        self.kept: dict[str, torch.Tensor] = {}
        self.bytes = 0

    def add(self, path: str | Path, image: Image.Image) -> None:
        """Keep a decoded image (decoded at ``decode_size``), while the budget lasts."""
        if self.bytes < BUDGET_BYTES:
            tensor = self.prepared(path, image)
            self.kept[str(path)] = tensor
            self.bytes += tensor.numel() * tensor.element_size()

    def get(self, path: str | Path) -> torch.Tensor:
        """The resized image of a file: kept, or read and decoded now."""
        kept = self.kept.get(str(path))
        if kept is not None:
            return kept
        return self.prepared(path, load_rgb(path, self.decode_size, self.limits))

    def prepared(self, path: str | Path, image: Image.Image) -> torch.Tensor:
        """A decoded image as the next step takes it: re-encoded (with ``reencode``), then resized."""
        return self.resize(self.reencode(image, str(path)) if self.reencode else image)
