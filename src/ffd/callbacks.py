"""Callbacks that write run artifacts."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


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
