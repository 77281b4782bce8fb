"""The pixel cache: decode and resize each image once per run.

For a backbone that trains (features can't be cached), JPEG decoding and
resizing are the repeated work left; augmentation still runs every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset

from ffd.data.images import DecodedImages
from ffd.data.records import Record


class PixelDataset(Dataset):
    """Decoded, resized uint8 images kept in memory: JPEG decoding happens once per run.

    Args:
        records: Rows to serve.
        images: Their resized images (the manifest scan's, or decoded now).
        view: Per-epoch transform (augmentation, normalization).
    """

    def __init__(self, records: Sequence[Record], images: DecodedImages, view: Callable) -> None:
        self.labels = [r.label for r in records]
        self.view = view
        with ThreadPoolExecutor() as pool:  # images the scan did not keep: PIL releases the GIL
            self.pixels = list(pool.map(lambda r: images.get(r.path), records))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.view(self.pixels[i]), self.labels[i]
