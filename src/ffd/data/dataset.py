"""A map-style dataset over manifest rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ffd.data.io import load_rgb
from ffd.data.records import Record
from ffd.data.reencode import Reencode
from ffd.data.settings import Limits


class ImageDataset(Dataset):
    """Yields ``(image tensor, label)`` for each manifest row.

    Args:
        records: Rows to serve (all readable: the manifest checked them).
        transform: Image -> tensor.
        decode_size: Smallest side the decoder must keep (the model's input size);
            None decodes at full size.
        limits: What a file may be (``ffd.data.settings.Limits``).
        reencode: Save each image as a JPEG first (``ffd.data.reencode``; None: as decoded).
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable,
        decode_size: int | None,
        limits: Limits,
        reencode: Reencode | None = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.decode_size, self.limits, self.reencode = decode_size, limits, reencode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        r = self.records[index]
        image = load_rgb(r.path, self.decode_size, self.limits)
        return self.transform(self.reencode(image, r.path) if self.reencode else image), r.label
