"""The LightningDataModule: manifest -> split datasets -> loaders."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ffd.data.dataset import ImageDataset
from ffd.data.manifest import DataLayoutError, Record, build_manifest, write_manifest
from ffd.data.synthetic import ensure_synthetic
from ffd.data.transforms import build_transform

log = logging.getLogger(__name__)


class FaceDataModule(L.LightningDataModule):
    """Real-vs-fake face images from a folder, split into train/val/test by the manifest.

    Args:
        root: Data folder (any layout ``ffd.data.manifest.discover`` knows) or CSV file.
        preprocess: The model's preprocessing (size, mean, std, interpolation); the
            model owns it so that checkpoints carry it.
        augment: Training augmentation (``hflip``, ``vflip`` probabilities, ``rotation`` degrees).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster GPU copies; None = when CUDA is available.
        val_fraction: Share of each stratum held out for validation.
        test_fraction: Share of each stratum held out for the final test.
        split_seed: Seed of the split (the same seed and data give the same split).
        synthetic: If given (``num_real``, ``num_fake``, ``seed``), generate a synthetic
            CIPLAB-like set into ``root`` first, unless it is there already.
        manifest_path: Where to write the manifest CSV (normally the run folder).
    """

    def __init__(
        self,
        root: str,
        preprocess: Mapping[str, Any],
        augment: Mapping[str, float] | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        synthetic: Mapping[str, int] | None = None,
        manifest_path: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.preprocess = dict(preprocess)
        self.augment = dict(augment or {})
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.synthetic = dict(synthetic) if synthetic else None
        if not self.synthetic and not self.root.exists():  # fail before any model is built
            raise DataLayoutError(f"The data folder {self.root} does not exist.")
        self.manifest_path = manifest_path
        self.records: list[Record] = []
        self.datasets: dict[str, ImageDataset] = {}

    def prepare_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        self.records = build_manifest(self.root, self.val_fraction, self.test_fraction, self.split_seed)
        if self.manifest_path:
            write_manifest(self.records, self.manifest_path)
            log.info("Manifest written to %s", self.manifest_path)
        size = int(self.preprocess["size"])
        for split in ("train", "val", "test"):
            rows = [r for r in self.records if r.ok and r.split == split]
            augment = self.augment if split == "train" else None
            self.datasets[split] = ImageDataset(rows, build_transform(self.preprocess, augment), size)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.datasets[split]
        if not len(dataset):
            raise ValueError(
                f"The {split} split is empty ({len(self.records)} files under {self.root}); "
                "use more data or larger data.val_fraction / data.test_fraction."
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
