"""The LightningDataModule: manifest -> split datasets -> loaders.

It wires the data steps together; each is a function of its own: synthetic
generation (``ffd.data.synthetic``), the manifest scan (``ffd.data.manifest``),
splits, CV folds and the label-shuffle control (``ffd.data.splits``), and the
caches (the pixel cache here, the feature cache a ``FeatureSource`` builds:
``ffd.engine.feature_cache``). Every setting comes from ``conf/data/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ffd.data.dataset import ImageDataset
from ffd.data.facts import SPLITS
from ffd.data.images import DecodedImages
from ffd.data.layouts import DataLayoutError, DataRoot, data_roots
from ffd.data.manifest import build_manifest
from ffd.data.pixel_cache import PixelDataset
from ffd.data.records import Record, write_manifest
from ffd.data.reencode import Reencode
from ffd.data.settings import CacheSettings, Limits, LoaderSettings
from ffd.data.splits import Fold, split_rows
from ffd.data.synthetic import ensure_synthetic
from ffd.data.transforms import build_transform, resize_transform, view_transform
from ffd.data.video.crops import CropSettings
from ffd.errors import ConfigError
from ffd.seeds import ORDER, WORKERS, epoch_seed

log = logging.getLogger(__name__)


class EpochShuffle(Sampler[int]):
    """A random order that depends only on (seed, epoch), like ``DistributedSampler`` on one process.

    ``RandomSampler`` draws its order from the global random stream, whose position
    depends on how many epochs this process has run; a run resumed from a checkpoint
    would then see other batches than an uninterrupted one. Lightning calls
    ``set_epoch`` before every training epoch; it also reseeds the loader's generator
    (the base seed of its workers).
    """

    def __init__(self, n: int, seed: int, generator: torch.Generator, epoch: int) -> None:
        self.n, self.seed, self.generator = n, seed, generator
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch, WORKERS))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, ORDER))
        return iter(torch.randperm(self.n, generator=g).tolist())


class FeatureSource(Protocol):
    """A frozen backbone that computes each split's features once (``ffd.engine.feature_cache``)."""

    runtime_report: dict[str, Any] | None
    meta: dict[str, Any] | None

    def datasets(
        self, splits: Mapping[str, tuple[Sequence[Record], Mapping[str, float] | None, int]],
        images: DecodedImages, preprocess: Mapping[str, Any], precision: str, device: torch.device, seed: int,
        num_workers: int,
    ) -> Mapping[str, Dataset]: ...  # fmt: skip


class FaceDataModule(L.LightningDataModule):
    """Real-vs-fake face images from a folder, split into train/val/test by the manifest.

    Args:
        root: Data folder (any layout ``ffd.data.layouts`` knows) or CSV file, or a list of them: one
            data set, each member with its own split and method (``ffd.data.layouts.data_roots``).
        split: ``val_fraction``, ``test_fraction`` (shares of each stratum) and ``seed``
            (the split's own: the same seed and data give the same split).
        augment: Training augmentation (``hflip``, ``vflip`` probabilities, ``rotation`` degrees).
        loader: How batches are read (``LoaderSettings``).
        cache: Which cache takes repeated work out of the epoch loop (``CacheSettings``).
        manifest_path: Where to write the manifest CSV (normally the run folder).
        synthetic: ``num_real``, ``num_fake``, ``seed``: generate a synthetic CIPLAB-like
            set into ``root`` first, unless it is there already; None for real data.
        reencode: Save every image as a JPEG of a random quality before the model sees it
            (``ffd.data.reencode``), so a format that differs between the classes carries no label.
        shuffle_labels: Permute the train and val labels (test keeps the true ones):
            a control experiment whose test score must be at chance.
        seed: The run's training seed: of that permutation and of the training order.
        video: How a video data set's videos become face crops (``frames``, ``stride``, ``scale``,
            ``size``, ``detector``: ``ffd.data.video.crops.CropSettings``, cached in ``cache.dir``);
            None for image data.
        preprocess: The model's preprocessing (size, mean, std, interpolation); the
            model owns it so that checkpoints carry it.
        limits: What a file may be (``limits:`` of conf/common.yaml; the training task passes it).
        features: What computes the feature cache: the model's frozen backbone, or None if it
            trains (the training task passes it).
        fold: ``(k, i)``: cross-validation fold i of k is the validation split
            (``ffd.training.crossval``); None for the plain split.
    """

    def __init__(
        self,
        root: DataRoot,
        split: Mapping[str, Any],
        augment: Mapping[str, float],
        loader: LoaderSettings,
        cache: CacheSettings,
        manifest_path: str | None,
        synthetic: Mapping[str, Any] | None,
        reencode: bool,
        shuffle_labels: bool,
        seed: int,
        video: Mapping[str, Any] | None,
        preprocess: Mapping[str, Any],
        limits: Limits,
        features: FeatureSource | None = None,
        fold: Fold | None = None,
    ) -> None:
        super().__init__()
        members = data_roots(root)
        self.synthetic = dict(synthetic) if synthetic else None
        if members is not None and self.synthetic:
            raise ConfigError(
                "data.root is a list, but a synthetic set is generated into one folder: give one "
                "data.root, or set data.synthetic=null to train on the folders listed."
            )
        self.data_root: DataRoot = root if members is None else members  # what the manifest reads
        folders = [Path(root)] if members is None else [m.path for m in members]  # type: ignore[arg-type]
        self.root = folders[0]  # a single data set's folder (where a synthetic set is generated)
        missing = [f for f in folders if not f.exists()] if not self.synthetic else []
        if missing:  # fail before training starts
            raise DataLayoutError(f"The data folder {missing[0]} does not exist.")
        self.loader, self.cache_settings, self.features = loader, cache, features
        self.cache = cache.resolved(frozen=features is not None)
        self.split, self.fold = dict(split), fold
        self.preprocess, self.augment, self.limits = dict(preprocess), dict(augment), limits
        self.pin_memory = torch.cuda.is_available() if loader.pin_memory is None else loader.pin_memory
        self.decode_size = int(self.preprocess["size"]) if loader.decode_draft else None
        self.manifest_path = manifest_path
        # A data setting: seeded by the split's seed, so runs of other training seeds share the cache
        self.reencode = Reencode(int(self.split["seed"])) if reencode else None
        self.shuffle_seed = seed if shuffle_labels else None
        self.seed = seed
        self.records: list[Record] = []
        self.rows: dict[
            str, list[Record]
        ] = {}  # each split's usable rows, as trained on (labels shuffled or not)
        self.datasets: dict[str, Dataset] = {}
        self.setup_seconds = 0.0
        self.video = dict(video) if video else None

    def prepare_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        start = time.perf_counter()
        # The scan decodes every file to check it; a cache keeps the images for its build.
        keep = self.cache != "none"
        resize = resize_transform(self.preprocess)
        images = DecodedImages(resize, self.decode_size, self.limits, self.reencode)
        s = self.split
        self.records = build_manifest(
            self.data_root, s["val_fraction"], s["test_fraction"], s["seed"], self.limits, self.fold,
            images if keep else None,
            CropSettings.from_config(self.video) if self.video else None, self.cache_settings.dir,
        )  # fmt: skip
        if self.manifest_path and (self.trainer is None or self.trainer.is_global_zero):  # one writes it
            write_manifest(self.records, self.manifest_path)
            log.info("Manifest written to %s", self.manifest_path)
        self.rows = split_rows(self.records, self.shuffle_seed)
        self.datasets = self._datasets(self.rows, images)
        self.setup_seconds = time.perf_counter() - start

    def _datasets(self, rows: dict[str, list[Record]], images: DecodedImages) -> dict[str, Dataset]:
        augment = {s: self.augment if s == "train" else None for s in SPLITS}
        if self.cache == "pixels":
            return {
                s: PixelDataset(rows[s], images, view_transform(self.preprocess, augment[s])) for s in SPLITS
            }
        if self.cache == "none":
            return {
                s: ImageDataset(
                    rows[s],
                    build_transform(self.preprocess, augment[s]),
                    self.decode_size,
                    self.limits,
                    self.reencode,
                )
                for s in SPLITS
            }
        assert self.features is not None  # resolved() gives "features" only with a frozen backbone
        trainer = self.trainer
        # Without augmentation all views would be the same image: keep one.
        views = {s: self.cache_settings.views if any((augment[s] or {}).values()) else 1 for s in SPLITS}
        splits = {s: (rows[s], augment[s], views[s]) for s in SPLITS}
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        # On CPU, loader workers would fight the backbone's threads for the same cores.
        workers = self.loader.num_workers if device.type == "cuda" else 0
        # Builds the cache, or opens it once it is there: under DDP the first rank of each disk
        # builds while the others wait on the cache's lock (no collective, so no timeout).
        precision = str(trainer.precision) if trainer else "32-true"
        return dict(self.features.datasets(splits, images, self.preprocess, precision, device,
                                           self.split["seed"], workers))  # fmt: skip

    def _loader(self, split: str) -> DataLoader:
        dataset = self.datasets[split]
        # Cached features are slices of a memory map: worker processes would only add copies.
        workers = 0 if self.cache == "features" else self.loader.num_workers
        training = split == "train"
        sampler, generator = None, None
        if training and (self.trainer is None or self.trainer.world_size == 1):
            # Under DDP Lightning's DistributedSampler does the same (seed + epoch).
            generator = torch.Generator()
            # The epoch about to run. A resumed run builds its loader (and loader workers prefetch
            # their first indices) before Lightning calls set_epoch, while current_epoch still
            # says the epoch its checkpoint finished; `processed` counts that one already.
            progress = self.trainer.fit_loop.epoch_progress.current if self.trainer else None
            epoch = progress.processed if progress else 0  # type: ignore[attr-defined]
            sampler = EpochShuffle(len(dataset), self.seed, generator, epoch)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.loader.batch_size,
            shuffle=training and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            pin_memory=self.pin_memory,
            # Training workers start afresh every epoch, seeded from (seed, epoch): a resumed run
            # augments as an uninterrupted one would. (Forking 2 workers costs well under a second.)
            persistent_workers=workers > 0 and not training,
            collate_fn=getattr(dataset, "collate", None),  # a dataset that batches itself (cached features)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
