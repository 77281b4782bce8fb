"""The LightningDataModule: manifest -> split datasets -> loaders."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ffd.cache import Encoder, FeatureDataset, PixelDataset, build_feature_cache, feature_key
from ffd.data.dataset import ImageDataset
from ffd.data.manifest import (
    SPLITS,
    DataLayoutError,
    Record,
    build_manifest,
    shuffled_labels,
    write_manifest,
)
from ffd.data.synthetic import ensure_synthetic
from ffd.data.transforms import build_transform, resize_transform, view_transform
from ffd.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "none", "pixels", "features")


class EpochShuffle(Sampler[int]):
    """A random order that depends only on (seed, epoch), like ``DistributedSampler`` on one process.

    ``RandomSampler`` draws its order from the global random stream, whose position
    depends on how many epochs this process has run; a run resumed from a checkpoint
    would then see other batches than an uninterrupted one. Lightning calls
    ``set_epoch`` before every training epoch; it also reseeds the loader's generator
    (the base seed of its workers).
    """

    def __init__(self, n: int, seed: int, generator: torch.Generator, epoch: int = 0) -> None:
        self.n, self.seed, self.generator = n, seed, generator
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 7919 + epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 104_729 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


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
        cache: ``none`` (decode and run the model on every image every epoch),
            ``pixels`` (decode and resize once), ``features`` (run a frozen backbone once
            per image and view; see ``ffd.cache``), or ``auto``: features when the
            backbone is frozen, else none.
        views: Augmented views cached per training image with ``cache=features``.
        cache_dir: Folder for the feature cache.
        encoder: The model's frozen backbone (``FakeFaceClassifier.encoder()``), or None
            if it trains; used by ``cache=features|auto``.
        decode_draft: Decode JPEGs at reduced size (libjpeg DCT scaling, never below
            the input size); False decodes every file at full size.
        folds: Cross-validation folds (0 = none): the test split stays as without
            CV and the rest is dealt into ``folds`` stratified folds.
        fold: Which fold is the validation split.
        shuffle_labels: Permute the train and val labels (test keeps the true ones):
            a control experiment whose test score must be at chance.
        shuffle_seed: The run's seed: of that permutation and of the training order
            (``EpochShuffle``); the split keeps its own.
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
        cache: str = "none",
        views: int = 8,
        cache_dir: str | None = None,
        encoder: Encoder | None = None,
        decode_draft: bool = True,
        folds: int = 0,
        fold: int = 0,
        shuffle_labels: bool = False,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.synthetic = dict(synthetic) if synthetic else None
        if not self.synthetic and not self.root.exists():  # fail before training starts
            raise DataLayoutError(f"The data folder {self.root} does not exist.")
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache must be one of {CACHE_MODES}, got {cache!r}.")
        if cache == "features" and encoder is None:
            raise ConfigError(
                "data.cache=features needs a frozen backbone (model.freeze=frozen): a backbone that "
                "trains changes its features every step. Use data.cache=pixels to decode images once."
            )
        self.cache = ("features" if encoder else "none") if cache == "auto" else cache
        if self.cache == "features" and (cache_dir is None or views < 1):
            raise ConfigError("data.cache=features needs data.cache_dir and data.views >= 1.")
        self.preprocess = dict(preprocess)
        self.augment = dict(augment or {})
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.manifest_path = manifest_path
        self.views, self.cache_dir, self.encoder = views, cache_dir, encoder
        size = int(self.preprocess["size"])
        self.decode_size = size if decode_draft else None
        self.cv = (folds, fold) if folds else None
        self.shuffle_labels, self.shuffle_seed = shuffle_labels, shuffle_seed
        self.records: list[Record] = []
        self.datasets: dict[str, Dataset] = {}
        self.setup_seconds = 0.0

    def prepare_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        start = time.perf_counter()
        self.records = build_manifest(
            self.root, self.val_fraction, self.test_fraction, self.split_seed, self.cv
        )
        if self.manifest_path and (self.trainer is None or self.trainer.is_global_zero):  # one writes it
            write_manifest(self.records, self.manifest_path)
            log.info("Manifest written to %s", self.manifest_path)
        rows = {s: [r for r in self.records if r.ok and r.split == s] for s in SPLITS}
        if self.shuffle_labels:
            # Val too: checkpoint selection on true val labels would leak label information.
            rows["train"] = shuffled_labels(rows["train"], self.shuffle_seed)
            rows["val"] = shuffled_labels(rows["val"], self.shuffle_seed + 1)
        for split, split_rows in rows.items():
            if not split_rows:
                raise ConfigError(
                    f"The {split} split is empty ({sum(r.ok for r in self.records)} usable files under "
                    f"{self.root}); use more data or set data.val_fraction / data.test_fraction above 0."
                )
        augment = {s: self.augment if s == "train" else None for s in SPLITS}
        if self.cache == "features":
            self.datasets = self._feature_datasets(rows, augment)
        elif self.cache == "pixels":
            resize = resize_transform(self.preprocess)
            self.datasets = {
                s: PixelDataset(
                    rows[s], resize, view_transform(self.preprocess, augment[s]), self.decode_size
                )
                for s in SPLITS
            }
        else:
            self.datasets = {
                s: ImageDataset(rows[s], build_transform(self.preprocess, augment[s]), self.decode_size)
                for s in SPLITS
            }
        self.setup_seconds = time.perf_counter() - start

    def _feature_datasets(self, rows: dict[str, list[Record]], augment: dict) -> dict[str, Dataset]:
        assert self.encoder is not None and self.cache_dir is not None
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        autocast = trainer.precision_plugin.forward_context if trainer else contextlib.nullcontext
        # Without augmentation all views would be the same image: keep one.
        views = {s: self.views if any((augment[s] or {}).values()) else 1 for s in SPLITS}
        settings = {
            "preprocess": self.preprocess,
            "augment": self.augment,
            "views": views,
            "precision": str(trainer.precision) if trainer else "32-true",
            "decode_size": self.decode_size,
            "seed": self.split_seed,
        }
        folder = Path(self.cache_dir) / f"features-{feature_key(self.encoder, settings, rows)}"
        splits = {s: (rows[s], view_transform(self.preprocess, augment[s]), views[s]) for s in SPLITS}
        # On CPU, loader workers would fight the backbone's threads for the same cores
        # (measured: 62 s with 2 workers vs 55 s without for 12k views on 2 cores).
        workers = self.num_workers if device.type == "cuda" else 0
        resize = resize_transform(self.preprocess)
        # Builds the cache, or opens it when it is there.
        build = partial(
            build_feature_cache, folder, self.encoder, splits, resize,
            self.decode_size, device, autocast, workers, self.split_seed,
        )  # fmt: skip

        store: dict[str, Any] | None = None
        if trainer is None or trainer.world_size == 1:
            store = build()
        else:
            # One process builds, the others wait and then open it. Global rank 0 first; then
            # each node's local rank 0 (which finds it when the cache folder is shared).
            store = build() if trainer.is_global_zero else None
            trainer.strategy.barrier("ffd_feature_cache")
            if store is None and trainer.local_rank == 0:
                store = build()
            trainer.strategy.barrier("ffd_feature_cache_node")
            store = store or build()
        return {s: FeatureDataset(store[s], [r.label for r in rows[s]]) for s in SPLITS}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        # Cached features are slices of a memory map: worker processes would only add copies.
        workers = 0 if self.cache == "features" else self.num_workers
        training = shuffle
        sampler, generator = None, None
        if shuffle and (self.trainer is None or self.trainer.world_size == 1):
            # Under DDP Lightning's DistributedSampler does the same (seed + epoch).
            generator = torch.Generator()
            # The epoch about to run. A resumed run builds its loader (and loader workers prefetch
            # their first indices) before Lightning calls set_epoch, while current_epoch still
            # says the epoch its checkpoint finished; `processed` counts that one already.
            progress = self.trainer.fit_loop.epoch_progress.current if self.trainer else None
            epoch = progress.processed if progress else 0  # type: ignore[attr-defined]
            n = len(self.datasets[split])  # type: ignore[arg-type]
            sampler = EpochShuffle(n, self.shuffle_seed, generator, epoch)
            shuffle = False
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            pin_memory=self.pin_memory,
            # Training workers start afresh every epoch, seeded from (seed, epoch): a resumed run
            # augments as an uninterrupted one would. (Forking 2 workers costs well under a second.)
            persistent_workers=workers > 0 and not training,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
