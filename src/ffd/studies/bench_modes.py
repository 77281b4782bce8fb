"""``python -m ffd.bench``: the measurements ``mode`` names (see ``conf/bench.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ffd.errors import ConfigError
from ffd.studies.benchmark import bench, bench_predict
from ffd.studies.gpu_check import gpu_check
from ffd.studies.scaling import scale_bench

MODES = ("recipe", "predict", "scaling", "gpu")


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    """The measurements ``cfg.mode`` names, into the run folder."""
    out = Path(cfg.paths.output_dir)
    if cfg.mode == "predict":
        if not cfg.run_dir:
            raise ConfigError("mode=predict measures a training run: pass run_dir=outputs/train/<run>.")
        return bench_predict(Path(cfg.run_dir), out)
    if cfg.mode == "scaling":
        return scale_bench(out, tuple(cfg.factors), list(cfg.overrides))
    if cfg.mode == "gpu":
        return gpu_check(out)
    if cfg.mode != "recipe":
        raise ConfigError(f"mode={cfg.mode!r}: choose one of {', '.join(MODES)}.")
    return bench(cfg, out)
