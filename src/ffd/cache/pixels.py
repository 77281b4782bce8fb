"""The pixel cache: decode and resize each image once per run.

For a backbone that trains (features can't be cached), JPEG decoding and
resizing are the repeated work left; augmentation still runs every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset

from ffd.data.io import load_rgb
from ffd.data.manifest import Record


class PixelDataset(Dataset):
    """Decoded, resized uint8 images kept in memory: JPEG decoding happens once per run.

    Args:
        records: Rows to serve.
        resize: Decode-stage transform (to the model's input size), run once per image.
        view: Per-epoch transform (augmentation, normalization).
        decode_size: Smallest side the JPEG decoder must keep.
    """

    def __init__(
        self, records: Sequence[Record], resize: Callable, view: Callable, decode_size: int | None
    ) -> None:
        self.labels = [r.label for r in records]
        self.view = view
        with ThreadPoolExecutor() as pool:  # PIL and torch release the GIL while they work
            self.pixels = list(pool.map(lambda r: resize(load_rgb(r.path, decode_size)), records))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.view(self.pixels[i]), self.labels[i]
