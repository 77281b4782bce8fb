"""Callbacks that write run artifacts."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import matplotlib
from lightning.pytorch.loggers import TensorBoardLogger

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from torchvision.transforms.functional import pil_to_tensor  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from ffd.data.manifest import FAKE, REAL  # noqa: E402
from ffd.errors import ConfigError  # noqa: E402
from ffd.gradcam import METHODS, explain_files, overlay, part_boxes, replaced_parts  # noqa: E402
from ffd.models.module import FakeFaceClassifier  # noqa: E402


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
                key = f"{split}/{name}"
                if key in logged:
                    self.history[key].append(float(logged[key]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        fig, axes = plt.subplots(1, len(self.metrics), figsize=(5 * len(self.metrics), 4), squeeze=False)
        for ax, name in zip(axes[0], self.metrics, strict=True):
            for split in ("train", "val"):
                values = self.history.get(f"{split}/{name}", [])
                ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
            ax.set(title=name, xlabel="epoch")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=100)
        plt.close(fig)


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

    def __init__(self, path: str, num_images: int = 16, method: str = "gradcam") -> None:
        if method not in METHODS:  # before training, not after it
            raise ConfigError(f"callbacks.gradcam.method must be one of {METHODS}, got {method!r}.")
        self.path, self.num_images, self.method = Path(path), num_images, method

    def on_fit_end(self, trainer: L.Trainer, pl_module: FakeFaceClassifier) -> None:  # type: ignore[override]
        records = getattr(trainer.datamodule, "records", [])  # type: ignore[attr-defined]
        val = [r for r in records if r.ok and r.split == "val"]
        picked = [r for r in val if r.label == REAL][: self.num_images // 2]
        picked += [r for r in val if r.label == FAKE][: self.num_images - len(picked)]
        if not trainer.is_global_zero or not picked:
            return
        was_training = pl_module.training
        pl_module.eval()
        tiles = []
        for r, (_, img, cam, _) in zip(
            picked, explain_files(pl_module, [Path(r.path) for r in picked], self.method), strict=True
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
