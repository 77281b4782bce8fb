"""Reference consumer of an ffd ONNX export: onnxruntime, numpy and Pillow, nothing else.

    python predict_onnx.py [--model model.onnx] IMAGE [IMAGE ...] > predictions.csv

Prints ``path,p_fake,logit,label`` for every image, decoded as model.json's ``decode``
says; the graph resizes and normalizes itself. The label comes from the logit (the calibrated
log-odds of fake, the graph's second output) at ``threshold_logit``: it never saturates as
p_fake does. ``ffd.export`` copies this file next
to every model.onnx, and ffd's tests check it reproduces ``ffd.predict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort
from PIL import Image

# The formats ffd reads (ffd.data.formats.IMAGE_FORMATS); a JPEG with extra frames opens as an MPO.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
JPEG_FORMATS = ("JPEG", "MPO")
# Modes Image.reduce() cannot average as they are (or would weigh by alpha) -> what comes first.
BEFORE_REDUCE = {
    "1": ("L",), "P": ("RGB",), "PA": ("RGB",), "LA": ("L",), "La": ("LA", "L"), "RGBA": ("RGB",),
    "RGBa": ("RGB",), "I;16": ("I",), "I;16L": ("I",), "I;16B": ("I",), "I;16N": ("I",),
}  # fmt: skip
BAND_PIXELS = 1 << 20
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1 to 8; 1 where there is none or it is corrupt."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(img: Image.Image, k: int) -> Image.Image:
    """8-bit RGB, reduced k times: BEFORE_REDUCE, reduce(k), 16-bit greyscale v / 256, 32-bit integer
    and float greyscale min-max to 0..255, convert("RGB"); on bands of rows (no full-size copy)."""
    steps = BEFORE_REDUCE.get(img.mode, ())
    scale: float | None = None
    offset = 0.0
    if img.mode.startswith("I;16"):
        scale = 1 / 256
    elif img.mode in ("I", "F"):
        lo, hi = cast("tuple[float, float]", img.getextrema())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{img.mode} image with values that are not finite (from {lo} to {hi})")
        scale = 255 / (hi - lo) if hi > lo else 0.0
        offset = -lo * scale
    if not steps and scale is None:  # reduced as it is: no full-size copy
        small = img.reduce(k) if k > 1 else img
        return small if small.mode == "RGB" else small.convert("RGB")
    width, height = img.size
    out = Image.new("RGB", (-(-width // k), -(-height // k)))
    rows = k * max(1, BAND_PIXELS // (width * k))
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        for mode in steps:
            band = band.convert(mode)
        if k > 1:
            band = band.reduce(k)
        if scale is not None:
            band = band.point(lambda v: v * scale + offset).convert("L")
        out.paste(band.convert("RGB"), (0, top // k))
    return out


def decode(path: str, size: int) -> np.ndarray:
    """An image file as upright uint8 RGB (height, width, 3), as ffd decodes it (model.json's
    ``decode.steps``): JPEGs at the smallest DCT scale that keeps both sides >= ``size``, other
    formats reduced by k = min(width, height) // size when both sides are >= 2 x ``size``."""
    with Image.open(path, formats=FORMATS) as img:
        jpeg = img.format in JPEG_FORMATS
        if jpeg:
            img.draft("RGB", (size, size))  # libjpeg DCT scaling, never below the input size
        img.load()
        orientation = exif_orientation(img)
        short = min(img.size)
        k = short // size if not jpeg and short >= 2 * size else 1
        rgb = to_rgb(img, k)
        method = UPRIGHT.get(orientation)
        upright = rgb if method is None else rgb.transpose(method)
        return np.asarray(upright, dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(Path(__file__).with_name("model.onnx")))
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["ffd"])
    size, threshold, names = card["preprocess"]["size"], card["threshold_logit"], card["class_names"]
    out = csv.writer(sys.stdout)
    out.writerow(["path", "p_fake", "logit", "label"])
    for path in args.images:
        probs, logit = session.run(None, {"image": decode(path, size)[None]})
        p_fake, score = float(probs[0, 1]), float(logit[0])
        out.writerow([path, repr(p_fake), repr(score), names[int(score >= threshold)]])


if __name__ == "__main__":
    main()
