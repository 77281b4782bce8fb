"""The LightningDataModule: manifest -> split datasets -> loaders.

It wires the data steps together; each is a function of its own: synthetic
generation (``ffd.data.synthetic``), the manifest scan (``ffd.data.manifest``),
splits, CV folds and the label-shuffle control (``ffd.data.splits``), and the
caches (``ffd.data.cache``). Every setting comes from ``conf/data/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ffd.backends import choose_runtime
from ffd.data.cache import cache_mode
from ffd.data.cache.features import (
    Encoder,
    FeatureDataset,
    build_feature_cache,
    compute_features,
    feature_bound,
    feature_key,
)
from ffd.data.cache.pixels import PixelDataset
from ffd.data.dataset import ImageDataset
from ffd.data.facts import SPLITS
from ffd.data.images import DecodedImages
from ffd.data.layouts import DataLayoutError
from ffd.data.manifest import build_manifest
from ffd.data.records import Record, write_manifest
from ffd.data.splits import Fold, split_rows
from ffd.data.synthetic import ensure_synthetic
from ffd.data.transforms import build_transform, resize_transform, rgbx, view_transform
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


class FaceDataModule(L.LightningDataModule):
    """Real-vs-fake face images from a folder, split into train/val/test by the manifest.

    Args:
        root: Data folder (any layout ``ffd.data.layouts`` knows) or CSV file.
        split: ``val_fraction``, ``test_fraction`` (shares of each stratum) and ``seed``
            (the split's own: the same seed and data give the same split).
        augment: Training augmentation (``hflip``, ``vflip`` probabilities, ``rotation`` degrees).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster GPU copies; None = when CUDA is available.
        cache: ``none``, ``pixels``, ``features`` or ``auto`` (see ``ffd.data.cache``).
        views: Augmented views cached per training image with ``cache=features``.
        cache_dir: Folder for the feature cache.
        decode_draft: Decode JPEGs at reduced size (libjpeg DCT scaling, never below
            the input size); False decodes every file at full size.
        manifest_path: Where to write the manifest CSV (normally the run folder).
        synthetic: ``num_real``, ``num_fake``, ``seed``: generate a synthetic CIPLAB-like
            set into ``root`` first, unless it is there already; None for real data.
        shuffle_labels: Permute the train and val labels (test keeps the true ones):
            a control experiment whose test score must be at chance.
        seed: The run's training seed: of that permutation and of the training order.
        runtime: Where the feature cache runs the frozen backbone: ``auto`` (the fastest by
            measurement, ``ffd.backends``), ``torch``, ``onnxruntime`` or ``openvino``.
        feature_dtype: How cached features are stored: ``float16``, or ``uint8`` (bounded
            features quantized, half the disk).
        preprocess: The model's preprocessing (size, mean, std, interpolation); the
            model owns it so that checkpoints carry it.
        encoder: The model's frozen backbone (``FakeFaceClassifier.encoder()``), or None
            if it trains; the feature cache runs it.
        fold: ``(k, i)``: cross-validation fold i of k is the validation split
            (``ffd.runs.cv``); None for the plain split.
        video: How a video data set's videos become face crops (``frames``, ``stride``, ``scale``,
            ``size``, ``detector``: ``ffd.data.video.crops.CropSettings``, cached in ``cache_dir``);
            None for image data.
    """

    def __init__(
        self,
        root: str,
        split: Mapping[str, Any],
        augment: Mapping[str, float],
        batch_size: int,
        num_workers: int,
        pin_memory: bool | None,
        cache: str,
        views: int,
        cache_dir: str,
        decode_draft: bool,
        manifest_path: str | None,
        synthetic: Mapping[str, Any] | None,
        shuffle_labels: bool,
        seed: int,
        runtime: str,
        feature_dtype: str,
        video: Mapping[str, Any] | None,
        preprocess: Mapping[str, Any],
        encoder: Encoder | None = None,
        fold: Fold | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.synthetic = dict(synthetic) if synthetic else None
        if not self.synthetic and not self.root.exists():  # fail before training starts
            raise DataLayoutError(f"The data folder {self.root} does not exist.")
        self.cache, self.encoder = cache_mode(cache, encoder), encoder
        if self.cache == "features" and views < 1:
            raise ConfigError(f"data.views must be >= 1 with the feature cache, got {views}.")
        self.split, self.fold = dict(split), fold
        self.preprocess, self.augment = dict(preprocess), dict(augment)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.views, self.cache_dir = views, Path(cache_dir)
        self.decode_size = int(self.preprocess["size"]) if decode_draft else None
        self.manifest_path = manifest_path
        self.shuffle_seed = seed if shuffle_labels else None
        self.seed = seed
        self.records: list[Record] = []
        self.rows: dict[
            str, list[Record]
        ] = {}  # each split's usable rows, as trained on (labels shuffled or not)
        self.datasets: dict[str, Dataset] = {}
        self.setup_seconds = 0.0
        self.runtime, self.feature_dtype = runtime, feature_dtype
        self.video = dict(video) if video else None
        self.runtime_report: dict[str, Any] | None = None  # the feature cache's runtime choice
        self.cache_meta: dict[str, Any] | None = None  # the feature cache's build (meta.json)

    def prepare_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        start = time.perf_counter()
        # The scan decodes every file to check it; a cache keeps the images for its build.
        keep = self.cache != "none"
        images = DecodedImages(resize_transform(self.preprocess), self.decode_size)
        s = self.split
        self.records = build_manifest(
            self.root, s["val_fraction"], s["test_fraction"], s["seed"], self.fold, images if keep else None,
            CropSettings.from_config(self.video) if self.video else None, self.cache_dir,
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
                s: ImageDataset(rows[s], build_transform(self.preprocess, augment[s]), self.decode_size)
                for s in SPLITS
            }
        encoder, trainer = self.encoder, self.trainer
        assert encoder is not None  # cache_mode gives "features" only with an encoder
        # Without augmentation all views would be the same image: keep one.
        views = {s: self.views if any((augment[s] or {}).values()) else 1 for s in SPLITS}
        precision = str(trainer.precision) if trainer else "32-true"
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        module = encoder.module.to(device).eval()
        choice = choose_runtime(self.runtime, module, encoder.fingerprint, encoder.memory_format, precision,
                                self._probe(rows, images, device), self.cache_dir / "runtimes",
                                pixels=self.preprocess)  # fmt: skip
        self.runtime_report = choice.report
        settings = {
            "preprocess": self.preprocess, "augment": self.augment, "views": views, "precision": precision,
            "decode_size": self.decode_size, "seed": self.split["seed"], "runtime": choice.runner.label,
            "dtype": self.feature_dtype, "view_maker": "rgbx-gather",  # how views are made (ties round up)
        }  # fmt: skip
        folder = self.cache_dir / f"features-{feature_key(encoder, settings, rows)}"
        splits = {s: (rows[s], augment[s], views[s]) for s in SPLITS}
        # On CPU, loader workers would fight the backbone's threads for the same cores
        # (measured: 62 s with 2 workers vs 55 s without for 12k views on 2 cores).
        workers = self.num_workers if device.type == "cuda" else 0
        # Builds the cache, or opens it once it is there: under DDP the first rank of each disk
        # builds while the others wait on the cache's lock (no collective, so no timeout).
        compute = partial(compute_features, runner=choice.runner, splits=splits, images=images,
                          device=device, num_workers=workers,
                          seed=self.split["seed"], dtype=self.feature_dtype,
                          bound=feature_bound(module))  # fmt: skip
        store, meta = build_feature_cache(folder, compute, list(splits))
        self.cache_meta = {**meta, "folder": str(folder)}
        return {s: FeatureDataset(store[s], [r.label for r in rows[s]], meta.get("scale")) for s in SPLITS}

    def _probe(
        self, rows: dict[str, list[Record]], images: DecodedImages, device: torch.device
    ) -> torch.Tensor:
        """Up to 16 plain training views (``rgbx`` pixels): what the backbone runtimes are measured
        and compared on."""
        probe = [images.get(r.path) for r in (rows["train"] or rows["val"] or rows["test"])[:16]]
        return rgbx(torch.stack(probe)).to(device)

    def _loader(self, split: str) -> DataLoader:
        # Cached features are slices of a memory map: worker processes would only add copies.
        workers = 0 if self.cache == "features" else self.num_workers
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
            sampler = EpochShuffle(len(self.datasets[split]), self.seed, generator, epoch)  # type: ignore[arg-type]
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=training and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            pin_memory=self.pin_memory,
            # Training workers start afresh every epoch, seeded from (seed, epoch): a resumed run
            # augments as an uninterrupted one would. (Forking 2 workers costs well under a second.)
            persistent_workers=workers > 0 and not training,
            collate_fn=FeatureDataset.collate if self.cache == "features" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
