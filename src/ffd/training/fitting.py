"""A training run: fit, test the best checkpoint, write the run's metrics; or k of them (cross-validation)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from ffd.data.datamodule import FaceDataModule
from ffd.data.decoding import Decoder
from ffd.data.settings import Limits
from ffd.data.splits import Fold
from ffd.engine.feature_cache import FeatureCache
from ffd.engine.scorers import CheckpointScorer
from ffd.models.checkpoint import load_checkpoint
from ffd.models.module import FakeFaceClassifier
from ffd.runtime import silence_known_noise
from ffd.training.calibrating import calibrate, store
from ffd.training.crossval import cross_validate
from ffd.training.distributed import SharedRunFolder, check_ddp_launch
from ffd.training.resume import LAST, keep_csv_history, resolve_ckpt_path
from ffd.training.slurm import finished_metrics, start_attempt

log = logging.getLogger(__name__)

# The shipped model's figures that TensorBoard's HPARAMS tab shows beside each run's settings, as
# shipped/<name> (logged once: val/* curves keep the epochs' own figures).
HPARAM_METRICS = (
    "val/auroc",
    "val/tpr_at_fpr_1",
    "val/ece",
    "test/auroc",
    "test/tpr_at_fpr_1",
    "test/ece",
    "test/acc",
)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What a sweep varies, for TensorBoard's HPARAMS tab: the model, the augmentation, the batch, the
    cached views, the epochs, the precision and the seed."""
    data = cfg.data
    chosen = {
        "model": cfg.model, "augment": data.augment, "batch_size": data.loader.batch_size,
        "views": data.cache.views, "max_epochs": cfg.trainer.max_epochs, "precision": cfg.trainer.precision,
        "seed": cfg.seed,
    }  # fmt: skip
    return OmegaConf.to_container(OmegaConf.create(chosen), resolve=True)  # type: ignore[return-value]


def build(cfg: DictConfig, fold: Fold | None) -> tuple[FakeFaceClassifier, FaceDataModule, L.Trainer, list]:
    """The model, its data module (a frozen backbone's feature cache in it), the trainer, its loggers."""
    model = instantiate(cfg.model)
    cache, encoder = instantiate(cfg.data.cache), model.encoder()
    features = FeatureCache(encoder, cache) if encoder is not None else None
    limits = Limits.from_config(cfg.limits)
    data = instantiate(cfg.data, cache=cache, features=features, preprocess=model.preprocess, limits=limits,
                       fold=fold)  # fmt: skip
    # ~callbacks / ~logger (or logger=null) on the command line: none
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(SharedRunFolder(cfg.paths.output_dir))  # several nodes: checked before fit reads a file
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return model, data, trainer, loggers


def ship(cfg: DictConfig, model: FakeFaceClassifier, data: FaceDataModule, trainer: L.Trainer,
         fold: Fold | None) -> dict[str, float]:  # fmt: skip
    """The best checkpoint as it ships: calibrated on val, scored on val (and test), stored back."""
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if not best:
        log.warning("No best checkpoint (fast_dev_run or no checkpoint callback): scoring the last weights.")
    shipped = load_checkpoint(best) if best else model
    test = bool(cfg.test) and fold is None  # CV never touches the test split: it stays for the end
    batch_size = cfg.data.loader.batch_size
    # fast_dev_run: one batch of each split, as for the fit
    one_batch = bool(getattr(trainer, "fast_dev_run", False))
    rows = {s: r[:batch_size] if one_batch else r for s, r in data.rows.items()}
    # The backbone in the fp32 runtime predict would choose here (same outputs to 1e-4), when it is
    # the frozen one every run shares (its export and choice are kept): a trunk that trained is new in
    # every run, and exporting it would cost more than it saves.
    runtime = cfg.runtime if shipped.hparams["freeze"] == "frozen" else "torch"
    scorer = CheckpointScorer(shipped, runtime, Path(cfg.paths.cache_dir) / "runtimes")
    decode = Decoder(int(shipped.preprocess["size"]), data.limits)
    metrics = calibrate(scorer, rows, shipped.hparams["threshold_method"], batch_size, test, decode)
    if best and Path(best).resolve().is_relative_to(Path(cfg.paths.output_dir).resolve()):
        store(shipped, best)  # never another run's checkpoint (a resume can carry its best path over)
    return metrics


def write_run(out: Path, metrics: dict[str, float], timings: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    shipped = sorted(k for k in metrics if not k.startswith("last_epoch/"))  # the rest: in metrics.json
    log.info("Final metrics: %s", ", ".join(f"{k}={metrics[k]:.4f}" for k in shipped))
    log.info("Run folder: %s", out.resolve())


def train(cfg: DictConfig, fold: Fold | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint; return the final metrics (also written to metrics.json).

    Args:
        fold: ``(k, i)``: train on cross-validation fold i of k (see ``ffd.training.crossval``).
    """
    silence_known_noise()
    earlier = start_attempt(cfg.paths.output_dir)  # a SLURM job requeued after a preemption or timeout
    if earlier == "finished":
        return finished_metrics(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if earlier == "unfinished":
        log.info("This job was requeued (preempted or out of time): it continues its run from %s.", LAST)
    ckpt_path = resolve_ckpt_path("last" if earlier else cfg.ckpt_path, cfg.paths.output_dir)
    model, data, trainer, loggers = build(cfg, fold)

    start = time.perf_counter()
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
        keep_csv_history(loggers)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    timings: dict[str, Any] = {"setup_s": data.setup_seconds, "fit_s": time.perf_counter() - start}
    # The last epoch's figures, as training saw them; the run's own are the best checkpoint's, below.
    logged = {k: v for k, v in trainer.callback_metrics.items() if k not in ("step", "epoch")}  # the x-axis
    metrics = {f"last_epoch/{k}": float(v) for k, v in logged.items()}
    checkpoint = trainer.checkpoint_callback
    if (
        isinstance(checkpoint, ModelCheckpoint)
        and checkpoint.monitor
        and checkpoint.best_model_score is not None
    ):
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    if not trainer.is_global_zero:  # under DDP one process scores and writes what ships
        return metrics
    start = time.perf_counter()
    metrics |= ship(cfg, model, data, trainer, fold)
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    for logger in loggers:  # after fit: written now, at the last epoch (the curves' x-axis)
        logger.log_metrics(tested, trainer.current_epoch)
        if isinstance(logger, TensorBoardLogger):  # the HPARAMS tab: this run beside a sweep's others
            shipped = {f"shipped/{k}": metrics[k] for k in HPARAM_METRICS if k in metrics}
            logger.log_hyperparams(run_settings(cfg), shipped, step=trainer.current_epoch)
        logger.save()
    timings["calibrate_s"] = time.perf_counter() - start
    timings = {k: round(v, 3) for k, v in timings.items()}
    timings["feature_cache"] = (
        data.features.meta if data.features else None
    )  # its build's views, seconds, rates
    write_run(Path(cfg.paths.output_dir), metrics, timings)
    return metrics


def run(cfg: DictConfig) -> float | None:
    """``python -m ffd.train``: one run, or one per fold with ``cv.folds``; the value a sweeper optimizes."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    check_ddp_launch(cfg.trainer, multirun)
    if cfg.cv.folds:
        summary = cross_validate(cfg, train)
        return summary.get(cfg.optimized_metric, {}).get("mean")
    return train(cfg).get(cfg.optimized_metric)
