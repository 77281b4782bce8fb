"""A training run: fit, test the best checkpoint, write the run's metrics; or k of them (cross-validation)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from ffd.data.splits import Fold
from ffd.models.checkpoint import load_checkpoint
from ffd.runs.calibration import calibrate, store
from ffd.runs.cv import cross_validate
from ffd.runs.distributed import SharedRunFolder, check_ddp_launch
from ffd.runs.resume import LAST, keep_csv_history, resolve_ckpt_path
from ffd.runs.slurm import finished_metrics, start_attempt
from ffd.runtime import silence_known_noise

log = logging.getLogger(__name__)


def train(cfg: DictConfig, fold: Fold | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint; return the final metrics (also written to metrics.json).

    Args:
        fold: ``(k, i)``: train on cross-validation fold i of k (see ``ffd.runs.cv``).
    """
    silence_known_noise()
    earlier = start_attempt(cfg.paths.output_dir)  # a SLURM job requeued after a preemption or timeout
    if earlier == "finished":
        return finished_metrics(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if earlier == "unfinished":
        log.info("This job was requeued (preempted or out of time): it continues its run from %s.", LAST)
    ckpt_path = resolve_ckpt_path("last" if earlier else cfg.ckpt_path, cfg.paths.output_dir)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, preprocess=model.preprocess, encoder=model.encoder(), fold=fold)
    # ~callbacks / ~logger (or logger=null) on the command line: none
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(SharedRunFolder(cfg.paths.output_dir))  # several nodes: checked before fit reads a file
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
        keep_csv_history(loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    timings = {"setup_s": datamodule.setup_seconds, "fit_s": time.perf_counter() - start}
    # The last epoch's figures, as training saw them; the run's own are the best checkpoint's, below.
    metrics = {f"last_epoch/{k}": float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = None
    if checkpoint and checkpoint.monitor and checkpoint.best_model_score is not None:
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    if not trainer.is_global_zero:  # under DDP one process scores and writes what ships
        return metrics
    start = time.perf_counter()
    best = checkpoint.best_model_path if checkpoint else ""
    if not best:
        log.warning("No best checkpoint (fast_dev_run or no checkpoint callback): scoring the last weights.")
    shipped = load_checkpoint(best) if best else model
    test = bool(cfg.test) and fold is None  # CV never touches the test split: it stays for the end
    method, batch_size = model.hparams["threshold_method"], cfg.data.batch_size
    # fast_dev_run: one batch of each split, as for the fit
    rows = {s: r[:batch_size] if trainer.fast_dev_run else r for s, r in datamodule.rows.items()}
    # The backbone in the fp32 runtime predict would choose here (ffd.backends: same outputs to 1e-4),
    # when it is the frozen one every run shares (its export and choice are kept): a trunk that
    # trained is new in every run, and exporting it would cost more than it saves.
    runtime = cfg.runtime if shipped.hparams["freeze"] == "frozen" else "torch"
    runtimes = Path(cfg.paths.cache_dir) / "runtimes"
    metrics |= calibrate(shipped, rows, method, batch_size, test, runtime, runtimes)
    if best and Path(best).resolve().is_relative_to(Path(cfg.paths.output_dir).resolve()):
        store(shipped, best)  # never another run's checkpoint (a resume can carry its best path over)
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    for logger in loggers:  # after fit: written now
        logger.log_metrics(tested, trainer.global_step)
        logger.save()
    timings["calibrate_s"] = time.perf_counter() - start

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    rounded: dict[str, Any] = {k: round(v, 3) for k, v in timings.items()}
    rounded["feature_cache"] = datamodule.cache_meta  # its build's views, seconds and rates
    (out / "timings.json").write_text(json.dumps(rounded, indent=2))
    shipped = sorted(k for k in metrics if not k.startswith("last_epoch/"))  # the rest: in metrics.json
    log.info("Final metrics: %s", ", ".join(f"{k}={metrics[k]:.4f}" for k in shipped))
    log.info("Run folder: %s", out.resolve())
    return metrics


def run(cfg: DictConfig, multirun: bool) -> float | None:
    """``python -m ffd.train``: one run, or one per fold with ``cv.folds``; the value a sweeper optimizes."""
    check_ddp_launch(cfg.trainer, multirun)
    if cfg.cv.folds:
        summary = cross_validate(cfg, train)
        return summary.get(cfg.optimized_metric, {}).get("mean")
    return train(cfg).get(cfg.optimized_metric)
