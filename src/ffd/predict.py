"""Score your own images: ``python -m ffd.predict ckpt_path=CKPT input=PATH [output=preds.csv]``.

``input`` is an image, a folder (searched recursively), a glob (``"photos/*.jpg"``)
or a text file with one path per line. Every file gets a row: path, p_fake,
label (real/fake at the checkpoint's validation-chosen threshold), status and
message. A file that can't be read gets its status, and the run goes on; the
exit status is non-zero only if nothing could be scored. Output is CSV, or JSON
Lines when ``output`` ends in ``.jsonl``.
"""

from __future__ import annotations

import csv
import glob
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
from tqdm import tqdm

from ffd.data.io import ImageDecodeError, load_rgb
from ffd.data.manifest import CLASS_NAMES, IMAGE_SUFFIXES
from ffd.data.transforms import build_transform
from ffd.errors import ConfigError, FfdError, exit_on_user_error
from ffd.models.checkpoint import load_checkpoint
from ffd.runtime import register_resolvers, tune_malloc

log = logging.getLogger(__name__)
register_resolvers()
FIELDS = ["path", "p_fake", "label", "status", "message"]


def expand_input(spec: str) -> list[Path]:
    """The files an ``input`` names: a file, a folder (recursive), a glob, or a .txt list of paths."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.suffix.lower() == ".txt" and path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        files = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines if line]
    elif path.is_file():
        files = [path]
    else:
        raise FfdError(f"input={spec} is not an image, a folder, a glob or a .txt list of paths.")
    if not files:
        raise FfdError(f"input={spec} names no image files.")
    return files


def predict(model: Any, files: list[Path], batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """One result row per file, in order; unreadable files get a status instead of a score."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device).eval()
    transform = build_transform(model.preprocess)
    size = model.preprocess["size"]
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> Iterator[dict[str, Any]]:
        x = torch.stack([t for _, t in pending]).to(device, non_blocking=True)
        with torch.no_grad(), torch.autocast(device.type, torch.float16 if cuda else torch.bfloat16):
            probs = model(x).float().softmax(-1)[:, 1].cpu().tolist()
        for (path, _), p in zip(pending, probs, strict=True):
            label = CLASS_NAMES[int(p >= model.threshold)]
            yield {"path": str(path), "p_fake": p, "label": label, "status": "ok", "message": ""}
        pending.clear()

    for path in files:
        try:
            pending.append((path, transform(load_rgb(path, size))))
        except ImageDecodeError as err:
            message = str(err)
            yield {"path": str(path), "p_fake": None, "label": "", "status": "unreadable", "message": message}
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def run(cfg: DictConfig) -> Counter:
    model = load_checkpoint(cfg.ckpt_path)
    files = expand_input(str(cfg.input))
    output = Path(cfg.output)
    if output.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"output={output} must end in .csv or .jsonl.")
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS) if output.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        rows = predict(model, files, cfg.batch_size)
        for row in tqdm(rows, total=len(files), unit="img", disable=not sys.stderr.isatty()):
            if row["p_fake"] is not None:
                row["p_fake"] = round(row["p_fake"], 6)
            writer.writerow(row) if writer else fh.write(json.dumps(row) + "\n")
            counts[row["label"] or row["status"]] += 1
    log.info(
        "%d files: %d real, %d fake, %d unreadable (threshold %.3f) -> %s",
        len(files), counts["real"], counts["fake"], counts["unreadable"], model.threshold, output,
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
