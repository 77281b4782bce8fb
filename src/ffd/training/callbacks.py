"""Callbacks of a training run: progress, curves, Grad-CAM grid, run_info.json, per-epoch seeding, the
format-shortcut check."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image

from ffd import rules
from ffd.data.facts import FAKE, REAL, part_boxes, replaced_parts
from ffd.engine.gradcam import explain_files, overlay
from ffd.files import sha256_file
from ffd.metrics.figures import curves_figure, save
from ffd.metrics.metadata_baseline import metadata_baseline
from ffd.models.module import FakeFaceClassifier
from ffd.provenance import provenance
from ffd.seeds import GLOBAL, epoch_seed

log = logging.getLogger(__name__)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars on a terminal; one log line per epoch when stdout is a pipe or a file,
    where tqdm's carriage-return updates would leave hundreds of lines (``refresh_rate=0``: neither)."""

    def __init__(self, refresh_rate: int) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.on_terminal = sys.stdout.isatty()
        if not self.on_terminal:
            self.disable()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.on_terminal and self.refresh_rate and trainer.is_global_zero:
            metrics = self.get_metrics(trainer, pl_module).items()
            shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics if "/" in k and isinstance(v, float))
            log.info("Epoch %d/%d: %s", trainer.current_epoch + 1, trainer.max_epochs, shown)


class TrainingCurves(L.Callback):
    """Save the seed's two graphs, accuracy and loss per epoch (train vs val), as one PNG.

    Args:
        path: Output PNG file.
        metrics: Metric names to plot, one panel each (logged as ``train/<name>`` and ``val/<name>``).
    """

    def __init__(self, path: str, metrics: tuple[str, ...] = ("acc", "loss")) -> None:
        self.path = Path(path)
        self.metrics = tuple(metrics)
        self.history: dict[str, list[float]] = defaultdict(list)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logged = trainer.callback_metrics
        for name in self.metrics:
            for split in ("train", "val"):
                if (key := f"{split}/{name}") in logged:
                    self.history[key].append(float(logged[key]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save(curves_figure(self.history, self.metrics), self.path)


class GradCamGrid(L.Callback):
    """At the end of training, Grad-CAM overlays of validation images: a TensorBoard image grid and a PNG.

    Shows the final weights' heatmaps of the evidence for "fake" on the first
    ``num_images`` validation images, half real and half fake, with the replaced
    parts boxed (see ``ffd.explain``). Off by default: ``callbacks=gradcam``.

    Args:
        path: Output PNG of the grid.
        num_images: Images in the grid.
        method: ``gradcam`` or ``hirescam``.
    """

    def __init__(self, path: str, num_images: int, method: str) -> None:
        rules.check("callbacks.gradcam.method", method)  # before training, not after it
        self.path, self.num_images, self.method = Path(path), num_images, method

    def on_fit_end(self, trainer: L.Trainer, pl_module: FakeFaceClassifier) -> None:  # type: ignore[override]
        data = trainer.datamodule  # type: ignore[attr-defined]
        records = getattr(data, "records", [])
        val = [r for r in records if r.ok and r.split == "val"]
        picked = [r for r in val if r.label == REAL][: self.num_images // 2]
        picked += [r for r in val if r.label == FAKE][: self.num_images - len(picked)]
        if not trainer.is_global_zero or not picked:
            return
        was_training = pl_module.training
        pl_module.eval()
        tiles = []
        for r, (_, img, cam, _) in zip(
            picked,
            explain_files(pl_module, [Path(r.path) for r in picked], self.method, len(picked), data.limits),
            strict=True,
        ):
            boxes = part_boxes(replaced_parts(r.parts), cam.shape[-1])
            tiles.append(pil_to_tensor(overlay(img, cam, boxes)))
        pl_module.train(was_training)
        grid = make_grid(tiles, nrow=4, padding=4, pad_value=255)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"{self.method}/val", grid, trainer.global_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, self.path)


class RunInfo(L.Callback):
    """Write ``run_info.json`` into the run folder once the data is set up (rank 0 only).

    It holds ffd's version and git commit, Python and package versions, the sha256 of
    the run's ``manifest.csv`` (which files, labels and splits it trained on), the
    seed, the world size, the feature cache's backbone runtime and the command
    line. Hydra writes the composed config next to it (``.hydra/config.yaml``).

    Args:
        path: The JSON file to write.
        manifest_path: The run's manifest, hashed once the data module has written it.
        seed: The run's seed.
    """

    def __init__(self, path: str, manifest_path: str | None, seed: int) -> None:
        self.path = Path(path)
        self.manifest_path = Path(manifest_path) if manifest_path else None
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        manifest = self.manifest_path if self.manifest_path and self.manifest_path.is_file() else None
        features = getattr(getattr(trainer, "datamodule", None), "features", None)
        info: dict[str, Any] = {
            **provenance(),
            "manifest": str(manifest) if manifest else None,
            "manifest_sha256": sha256_file(manifest) if manifest else None,
            "seed": self.seed,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "world_size": trainer.world_size,
            # the feature cache's backbone runtime: chosen how, and the rates measured
            "backbone_runtime": getattr(features, "runtime_report", None),
            "command": [Path(sys.executable).name, *sys.argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run: keep every earlier attempt's record, whole
            previous = json.loads(self.path.read_text())
            info["earlier_attempts"] = previous.pop("earlier_attempts", []) + [previous]
        self.path.write_text(json.dumps(info, indent=2))


class EpochSeed(L.Callback):
    """Seed torch, numpy and random at the start of every training epoch from (seed, epoch).

    Shuffling, augmentation, the feature cache's view choice and dropout then depend on
    the epoch only, not on how many epochs this process has run: a run resumed from a
    checkpoint draws the same numbers as one that was never interrupted.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Distinct per rank, as seed_everything(workers=True) would make them.
        s = epoch_seed(self.seed, trainer.current_epoch, GLOBAL, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class ShortcutCheck(L.Callback):
    """The metadata-only baseline (``ffd.metrics.metadata_baseline``) on the training split, once the data
    is set up and before the first epoch: file headers only, a second or two. Its result goes into
    ``shortcut.json`` in the run folder (the model card carries it); a shortcut is a warning in the log,
    with the fix, unless the run applies it (``data.reencode``: the files keep their formats, the model
    sees every image re-encoded).

    Args:
        path: Where the result is written.
        seed: The baseline's folds and bootstrap.
        reencode: Whether the run re-encodes every image (``data.reencode``).
    """

    def __init__(self, path: str, seed: int, reencode: bool) -> None:
        self.path, self.seed, self.reencode = Path(path), seed, reencode

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train = getattr(getattr(trainer, "datamodule", None), "rows", {}).get("train")
        if not trainer.is_global_zero or not train or self.path.exists():  # a resumed run checked already
            return
        result = metadata_baseline(train, self.seed) | {"reencode": self.reencode}
        self.path.write_text(json.dumps(result, indent=2))
        if result["shortcut"] and self.reencode:
            log.info("Training split's files: AUROC %.3f from metadata alone; data.reencode=true re-encodes "
                     "every image as a JPEG before the model sees it, so the format carries no label.",
                     result["auroc"])  # fmt: skip
        else:
            (log.warning if result["shortcut"] else log.info)("Training split: %s", result["finding"])
