"""What the seed recipe costs as the data grows (``ffd bench mode=scaling``).

At 1x, 5x and 10x CIPLAB's size, each step of ffd's default path is timed in one
training run per size (``ffd.studies.training_runs``): the manifest scan, the
feature cache build, head training; with the run's peak RSS and the cache's size
on disk. The larger sets are made cheaply from the CIPLAB-sized synthetic set:
every image is written ``factor`` times, each copy a different random crop (85-100 %
of the side), resized to ``SOURCE_SIDE`` px and re-encoded, so no two files are
the same (the manifest drops exact duplicates) and decoding stays cheap. Copies
of one face land in different splits, so the accuracy of these runs means nothing:
only their cost is reported.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ffd.config import compose_config
from ffd.data.facts import CIPLAB_FOLDERS
from ffd.data.io import image_files
from ffd.data.synthetic import ensure_synthetic
from ffd.metrics.tables import markdown_table
from ffd.studies.training_runs import disk_bytes, train_process

log = logging.getLogger("ffd.bench")

SOURCE_SIDE = 320  # px: above the model's 224 input, small enough to decode fast
FACTORS = (1, 5, 10)


def _copy(task: tuple[str, str, int]) -> None:
    src, dst, seed = task
    rng = np.random.default_rng(seed)
    with Image.open(src) as file:
        img = file.convert("RGB")
    side = int(min(img.size) * rng.uniform(0.85, 1.0))
    left, top = (int(rng.integers(0, s - side + 1)) for s in img.size)
    img = img.crop((left, top, left + side, top + side)).resize((SOURCE_SIDE, SOURCE_SIDE))
    img.save(dst, "JPEG", quality=90)


def _copy_name(stem: str, k: int) -> str:
    """Copy k's file name, in CIPLAB's scheme: real_00001 -> real_100001, easy_12_1010 -> easy_100012_1010."""
    parts = stem.split("_")
    parts[1] = f"{k}{int(parts[1]):05d}"
    return "_".join(parts) + ".jpg"


def scaled_set(tree: Path, out: Path, factor: int) -> Path:
    """``factor`` distinct copies of every image of a CIPLAB tree, in the same layout and name scheme."""
    marker = out / "scaled.json"
    spec = {"source": str(tree), "factor": factor, "side": SOURCE_SIDE}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    shutil.rmtree(out, ignore_errors=True)
    tasks = []
    for folder in CIPLAB_FOLDERS:
        (out / folder).mkdir(parents=True)
        for i, src in enumerate(image_files(tree / folder)):
            for k in range(factor):
                tasks.append(
                    (
                        str(src),
                        str(out / folder / _copy_name(src.stem, k)),
                        zlib.crc32(f"{folder}/{i}/{k}".encode()),
                    )
                )
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        pool.map(_copy, tasks, chunksize=32)
    marker.write_text(json.dumps(spec))
    return out


def scaling(out: Path, tree: Path, factors: tuple[int, ...], overrides: list[str]) -> dict[str, Any]:
    """One default-path training run per factor (with ``overrides``); their costs (see the module doc)."""
    rows = {}
    for factor in factors:
        data = scaled_set(tree, out / "data" / f"x{factor}", factor)
        cache = out / "cache" / f"x{factor}"
        # The copies, not a generated set.
        settings = ["data=ciplab", f"data.root={data}", f"paths.cache_dir={cache}", "logger=csv", *overrides]
        run_dir = out / f"scaling_x{factor}"
        wall, peak_rss = train_process(settings, run_dir, out / f"scaling_x{factor}.log")
        meta = json.loads(next(cache.glob("features-*/meta.json")).read_text())
        timings = json.loads((run_dir / "timings.json").read_text())
        rows[f"x{factor}"] = {
            "images": len(image_files(data)),
            "manifest_s": round(timings["setup_s"] - meta["seconds"], 1),
            "cache_s": meta["seconds"],
            "cache_views": meta["views"],
            "head_s": round(timings["fit_s"] - timings["setup_s"], 1),
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(peak_rss, 2),
            "cache_gib": round(disk_bytes(cache) / 2**30, 2),
        }
    return rows


def scaling_markdown(rows: dict[str, Any]) -> str:
    base = next(iter(rows.values()))
    header = [
        "size",
        "images",
        "manifest",
        "cache build",
        "head training",
        "wall",
        "peak RSS",
        "cache on disk",
    ]

    def cell(r: dict[str, Any], key: str, unit: str) -> str:
        growth = r[key] / base[key] if base[key] else float("nan")
        return f"{r[key]:g} {unit} ({growth:.1f}x)"

    table = [
        [name, r["images"], cell(r, "manifest_s", "s"), cell(r, "cache_s", "s"), cell(r, "head_s", "s"),
         cell(r, "wall_s", "s"), cell(r, "peak_rss_gib", "GiB"), cell(r, "cache_gib", "GiB")]
        for name, r in rows.items()
    ]  # fmt: skip
    return "\n".join(markdown_table(header, table)) + "\n"


def scale_bench(out: Path, factors: tuple[int, ...], overrides: list[str]) -> dict[str, Any]:
    """``mode=scaling``: ``scaling`` from the CIPLAB-sized synthetic set; scaling.json and .md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config("train")
    tree = ensure_synthetic(cfg.data.root, **cfg.data.synthetic)
    rows = scaling(out, tree, factors, overrides)
    (out / "scaling.json").write_text(json.dumps({"overrides": overrides, "sizes": rows}, indent=2))
    table = f"Overrides: {' '.join(overrides) or 'none'}\n\n" + scaling_markdown(rows)
    (out / "scaling.md").write_text(table)
    log.info("\n%s", table)
    return rows
