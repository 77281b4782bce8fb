"""Train a model: ``python -m ffd.train +experiment=seed`` (Hydra; ``-m`` for sweeps)."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from ffd.cv import cross_validate
from ffd.errors import exit_on_user_error
from ffd.runs import check_ddp_launch, resolve_ckpt_path
from ffd.runtime import is_rank_zero, register_resolvers, tune_malloc
from ffd.sweep import register_resolvers as register_sweep_resolvers

log = logging.getLogger(__name__)
register_resolvers()
register_sweep_resolvers()
# The frozen backbone is in eval mode on purpose (BatchNorm statistics stay fixed).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; return the final metrics (also written to metrics.json)."""
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, preprocess=model.preprocess, encoder=model.encoder())
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
        keep_csv_history(loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    timings = {"setup_s": datamodule.setup_seconds, "fit_s": time.perf_counter() - start}
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = None
    if checkpoint and checkpoint.monitor and checkpoint.best_model_score is not None:
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    if cfg.get("test"):
        best = checkpoint.best_model_path if checkpoint else ""
        if not best:
            log.warning(
                "No best checkpoint (fast_dev_run or no checkpoint callback): testing the last weights."
            )
        start = time.perf_counter()
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        timings["test_s"] = time.perf_counter() - start
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}

    out = Path(cfg.paths.output_dir)
    if not trainer.is_global_zero:  # under DDP every rank has the same synced metrics; one writes them
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "timings.json").write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}, indent=2))
    log.info("Final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    log.info("Run folder: %s", out.resolve())
    return metrics


def keep_csv_history(loggers: list) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv: keep the killed run's epochs beside it."""
    if not is_rank_zero():  # DDP: rank 0 did (before it started the others)
        return
    for logger in loggers:
        if isinstance(logger, CSVLogger) and (csv := Path(logger.log_dir) / "metrics.csv").is_file():
            n = 1 + sum(1 for _ in csv.parent.glob("metrics.before_resume_*.csv"))
            csv.rename(csv.with_name(f"metrics.before_resume_{n}.csv"))
            log.info("Kept the earlier epochs' %s as %s", csv.name, f"metrics.before_resume_{n}.csv")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    exit_on_user_error(lambda: check_ddp_launch(cfg.trainer, multirun))
    if cfg.cv.folds:
        summary = exit_on_user_error(lambda: cross_validate(cfg, train))
        return summary.get(cfg.get("optimized_metric") or "", {}).get("mean")
    metrics = exit_on_user_error(lambda: train(cfg))
    # Returned for sweepers (e.g. Optuna) that optimize one value.
    return metrics.get(cfg.get("optimized_metric") or "")


if __name__ == "__main__":
    tune_malloc()
    main()
