"""The GPU check (``ffd bench mode=gpu``, ``bench/gpu_check.sh``): ffd's figures on a CUDA machine, one file.

On a GPU it measures, into ``gpu_check.json``: the seed recipe at ``16-mixed`` on the CIPLAB-sized
synthetic set (feature cache build and head training), two epochs of the naive path (no cache,
fp32) with their time extrapolated to the recipe's epochs for the speed-up ratio, the export's parity
on CUDA and predict's throughput (``measure_predict``: checkpoint and ONNX), JPEG decoding by
Pillow (what ffd decodes with) against torchvision's GPU decoder (nvJPEG) on the same files, and
``nvidia-smi``'s facts.

Without a GPU the same steps run small on the CPU (``dry: true`` in the file): CI runs that, so the
script is known to work before a GPU machine is at hand.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from ffd.config import compose_config
from ffd.data.io import load_rgb
from ffd.data.settings import Limits
from ffd.data.synthetic import ensure_synthetic
from ffd.runtime import cpu_name
from ffd.studies.benchmark import VARIANTS, extrapolate, held_out, measure_predict, run_training

log = logging.getLogger("ffd.bench")

NAIVE_EPOCHS = 2
# The dry run: a small set and model, so CI runs every step in about a minute.
DRY = [
    "data.synthetic.num_real=40",
    "data.synthetic.num_fake=40",
    "model.input_size=64",
    "trainer.max_epochs=2",
]
SMI_FIELDS = "name,driver_version,memory.total,power.limit,clocks.max.sm,pcie.link.gen.max"


def gpu_facts() -> dict[str, Any]:
    """The GPU as torch and nvidia-smi see it (None where there is none)."""
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu": cpu_name(),
                             "cores": os.cpu_count(), "python": platform.python_version()}  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                  "multiprocessors": p.multi_processor_count}  # fmt: skip
    if smi := shutil.which("nvidia-smi"):
        query = [smi, f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader"]
        answer = subprocess.run(query, capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = dict(
            zip(SMI_FIELDS.split(","), answer.stdout.strip().split(", "), strict=False)
        )
    return facts


def decode_rates(files: list[Path], device: torch.device) -> dict[str, Any]:
    """Images/s of Pillow (ffd's decoder: full size, one thread) and of torchvision's ``decode_jpeg`` on
    ``device`` (nvJPEG on a GPU), on the same files, in batches of 64."""
    from torchvision.io import decode_jpeg, read_file

    limits = Limits.from_config(compose_config("predict", ["ckpt_path=unused", "input=unused"]).limits)
    start = time.perf_counter()
    for f in files:
        load_rgb(f, None, limits)
    pil = len(files) / (time.perf_counter() - start)
    data = [read_file(str(f)) for f in files]
    decode_jpeg(data[:8], device=device)  # warm-up (the GPU decoder's first call initializes it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(data), 64):
        decode_jpeg(data[i : i + 64], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tv = len(files) / (time.perf_counter() - start)
    return {
        "images": len(files),
        "pillow_img_per_s": round(pil, 1),
        f"torchvision_{device.type}_img_per_s": round(tv, 1),
    }


def gpu_check(out: Path) -> dict[str, Any]:
    """Every measurement of the module doc into ``out/gpu_check.json``; a dry run where torch sees no GPU."""
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if not cuda:
        log.warning("No CUDA GPU: a dry run of the GPU check on the CPU (small set and model).")
    small = [] if cuda else DRY
    device = (
        ["trainer.accelerator=gpu", "trainer.precision=16-mixed"] if cuda else ["trainer.accelerator=cpu"]
    )
    train_cfg = compose_config("train", small)
    data = Path(train_cfg.data.root) if cuda else out / "synthetic"
    start = time.perf_counter()
    ensure_synthetic(data, **train_cfg.data.synthetic)
    report: dict[str, Any] = {"dry": not cuda, "facts": gpu_facts(),
                              "synthetic_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    report["fast"] = run_training("fast", out, data, [*device, *small], {})
    naive_overrides, env = VARIANTS["naive"]
    epochs = int(train_cfg.trainer.max_epochs)
    naive_epochs = min(NAIVE_EPOCHS, epochs)
    naive = run_training("naive", out, data, [*naive_overrides, *device[:1], *small,
                                              f"trainer.max_epochs={naive_epochs}"], env)  # fmt: skip
    report["naive"] = extrapolate(naive, naive_epochs, epochs)
    report["speedup"] = round(report["naive"]["wall_s"] / report["fast"]["wall_s"], 2)
    run_dir = Path(report["fast"]["run_dir"])
    report["predict"] = measure_predict(run_dir, out)  # exports the run first: its parity on this device
    report["export_parity"] = json.loads((out / "export" / "model.json").read_text())["parity"]
    files = [f for f in held_out(run_dir) if f.suffix.lower() in (".jpg", ".jpeg")][:512]
    report["decode"] = decode_rates(files, torch.device("cuda" if cuda else "cpu"))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    fast, naive, rate = report["fast"], report["naive"], report["predict"].get("predict_checkpoint_img_per_s")
    where = report["facts"].get("gpu", "dry run on the CPU")
    log.info("GPU check (%s): seed recipe %.0f s, naive path %.0f s (x%.1f), predict %s img/s -> %s", where,
             fast["wall_s"], naive["wall_s"], report["speedup"], rate, out / "gpu_check.json")  # fmt: skip
    return report
