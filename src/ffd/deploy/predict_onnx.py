"""Reference consumer of an ffd ONNX export: onnxruntime, numpy and Pillow, nothing else.

    python predict_onnx.py [--model model.onnx] IMAGE [IMAGE ...] > predictions.csv

Prints ``path,p_fake,label`` for every image, decoded as model.json's ``decode``
says; the graph resizes and normalizes itself. ``ffd.export`` copies this file next
to every model.onnx, and ffd's tests check it reproduces ``ffd.predict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def decode(path: str, size: int) -> np.ndarray:
    """An image file as upright uint8 RGB (height, width, 3), as ffd decodes it."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # libjpeg DCT scaling, never below the input size
        img.load()
        upright = ImageOps.exif_transpose(img)
        if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
            upright = upright.point(lambda v: v / 256).convert("L")
        return np.asarray(upright.convert("RGB"), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(Path(__file__).with_name("model.onnx")))
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["ffd"])
    size, threshold, names = card["preprocess"]["size"], card["threshold"], card["class_names"]
    out = csv.writer(sys.stdout)
    out.writerow(["path", "p_fake", "label"])
    for path in args.images:
        (probs,) = session.run(None, {"image": decode(path, size)[None]})
        p_fake = float(probs[0, 1])
        out.writerow([path, repr(p_fake), names[int(p_fake >= threshold)]])


if __name__ == "__main__":
    main()
