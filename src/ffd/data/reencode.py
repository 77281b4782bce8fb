"""Re-encoding every image as a JPEG of a random quality: the fix for a format shortcut.

Where the real images of a data set are JPEGs and the fakes PNGs (GenImage), a detector can learn the
format instead of the forgery (Grommelt et al., "Fake or JPEG? Revealing Common Biases in Generated
Image Detection Datasets", 2024). Saving every image as a JPEG before the model sees it (after
decoding, before the resize) leaves the format nothing to say about the label. ``data.reencode=true``
does this to every image of a training run; ``ffd eval reencode=true`` to the images it scores, to
show how much of a model's score the format carried.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from PIL import Image

QUALITY = (70, 100)  # JPEG quality, drawn per file (uniform, both ends included)


@dataclass(frozen=True)
class Reencode:
    """An image -> the same image saved as a JPEG at a quality drawn from ``QUALITY`` by its file's path
    and ``seed``: the same file always gets the same quality (caches stay valid), files differ."""

    seed: int

    def quality(self, key: str) -> int:
        return QUALITY[0] + zlib.crc32(f"{self.seed}:{key}".encode("utf-8", "surrogateescape")) % (
            QUALITY[1] - QUALITY[0] + 1
        )

    def __call__(self, image: Image.Image, key: str) -> Image.Image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=self.quality(key))
        buffer.seek(0)
        out = Image.open(buffer)
        out.load()
        return out
