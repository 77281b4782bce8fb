"""Score your own images: ``python -m ffd.predict ckpt_path=CKPT input=PATH [output=preds.csv]``.

``input`` is an image, a folder (searched recursively), a glob (``"photos/*.jpg"``)
or a text file with one path per line. Every file gets a row: path, p_fake,
label (real/fake at the checkpoint's validation-chosen threshold), status and
message. A file that can't be read gets its status, and the run goes on; the
exit status is non-zero only if nothing could be scored. Output is CSV, or JSON
Lines when ``output`` ends in ``.jsonl``.

``ckpt_path`` is an ffd checkpoint or a model.onnx written by ``ffd.export``
(onnxruntime; no Lightning needed). ``face_crop=true`` first crops the largest
face from each photo (OpenCV Haar cascade); a photo without one gets status
``no_face``; ``crops_dir=FOLDER`` saves the crops for inspection.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from ffd.data.faces import FaceCropper
from ffd.data.io import ImageDecodeError, expand_input, load_rgb
from ffd.data.manifest import CLASS_NAMES
from ffd.data.transforms import build_transform
from ffd.errors import ConfigError, FfdError, exit_on_user_error
from ffd.inference import Scorer, load_scorer
from ffd.runtime import register_resolvers, tune_malloc

log = logging.getLogger(__name__)
register_resolvers()
FIELDS = ["path", "p_fake", "label", "status", "message"]


def _load(path: Path, size: int, cropper: FaceCropper | None) -> tuple[Image.Image | None, str]:
    """The image to score (None if it has no face), and why not."""
    if cropper is None:
        return load_rgb(path, size), ""
    # Full-size decode: the face may be a small part of the photo.
    face = cropper(load_rgb(path, None))
    return face, "" if face is not None else "no face found (OpenCV Haar cascade)"


def predict(
    scorer: Scorer,
    files: list[Path],
    batch_size: int = 32,
    cropper: FaceCropper | None = None,
    crops_dir: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One result row per file, in order; files that can't be scored get a status and message instead.

    Args:
        scorer: A checkpoint or ONNX model (``ffd.inference.load_scorer``).
        files: Image files.
        batch_size: Images per forward pass.
        cropper: Crop each photo to its largest face first (status ``no_face`` if none).
        crops_dir: Save each face crop there, as ``<index>_<name>.png``.
    """
    transform = build_transform(scorer.preprocess)
    size = scorer.preprocess["size"]
    pending: list[tuple[dict[str, Any], torch.Tensor | None]] = []  # rows wait, in order, for their batch

    def flush() -> Iterator[dict[str, Any]]:
        batch = [x for _, x in pending if x is not None]
        probs = iter(scorer.p_fake(torch.stack(batch)) if batch else [])
        for row, x in pending:
            if x is not None:
                p = next(probs)
                row |= {"p_fake": p, "label": CLASS_NAMES[int(p >= scorer.threshold)]}
            yield row
        pending.clear()

    for i, path in enumerate(files):
        try:
            img, message = _load(path, size, cropper)
            status = "ok" if img is not None else "no_face"
        except ImageDecodeError as err:
            img, status, message = None, "unreadable", str(err)
        row = {"path": str(path), "p_fake": None, "label": "", "status": status, "message": message}
        if img is not None and crops_dir is not None:
            img.save(crops_dir / f"{i:05d}_{path.stem}.png")
        pending.append((row, None if img is None else transform(img)))
        if sum(x is not None for _, x in pending) == batch_size:
            yield from flush()
    yield from flush()


def run(cfg: DictConfig) -> Counter:
    scorer = load_scorer(cfg.ckpt_path)
    files = expand_input(str(cfg.input))
    cropper = FaceCropper(cfg.face_margin) if cfg.face_crop else None
    crops_dir = Path(cfg.crops_dir) if cfg.crops_dir else None
    if crops_dir:
        if crops_dir.is_dir() and any(crops_dir.iterdir()):
            raise ConfigError(
                f"crops_dir={crops_dir} is not empty: name a new folder, so no earlier file is replaced."
            )
        crops_dir.mkdir(parents=True, exist_ok=True)
    output = Path(cfg.output)
    if output.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"output={output} must end in .csv or .jsonl.")
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS) if output.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        rows = predict(scorer, files, cfg.batch_size, cropper, crops_dir)
        for row in tqdm(rows, total=len(files), unit="img", disable=not sys.stderr.isatty()):
            if row["p_fake"] is not None:
                row["p_fake"] = round(row["p_fake"], 6)
            writer.writerow(row) if writer else fh.write(json.dumps(row) + "\n")
            counts[row["label"] or row["status"]] += 1
    log.info(
        "%d files: %d real, %d fake, %d unreadable, %d without a face (threshold %.3g) -> %s",
        len(files), counts["real"], counts["fake"], counts["unreadable"], counts["no_face"],
        scorer.threshold, output,
    )  # fmt: skip
    if not counts["real"] + counts["fake"]:
        raise FfdError(f"None of the {len(files)} files could be scored; see {output}.")
    return counts


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: run(cfg))


if __name__ == "__main__":
    tune_malloc()
    main()
