"""The feature cache: a frozen backbone's output, computed once per image and view.

A frozen backbone computes the same output for the same input every epoch,
and it is nearly all of the seed recipe's compute. The feature cache runs it once
per image and *view*: K augmented views per training image (the
same flip/rotate distribution as the uncached path) and the one plain view
for val/test. Training then draws one view per image per epoch and trains
the head alone, so augmentation stays real and epochs cost almost nothing.
The views are made as tensor ops on the stacked images, and the backbone runs
in whichever runtime ``ffd.engine.runtimes`` chose for it. The cache
sits in memory-mapped ``.npy`` files (fp16, or uint8 for bounded features)
under a key made of everything that changes the features (the runtime
included); any change gives a new key, so a stale cache is never read. A file
lock per key lets one process build while others that need the same cache wait
and reuse it; a build becomes visible only when complete (atomic rename).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from ffd.data.images import DecodedImages
from ffd.data.records import Record
from ffd.data.settings import CacheSettings
from ffd.data.transforms import augment_steps, batch_views, batched, rgbx
from ffd.engine.runtimes.chooser import choose_runtime
from ffd.engine.runtimes.runner import Runner, rate
from ffd.engine.scoring import prefetched
from ffd.errors import ConfigError, FfdError
from ffd.files import publish_folder
from ffd.models.encoder import Encoder
from ffd.progress import progress

log = logging.getLogger(__name__)

META = "meta.json"  # the build's last file
# The backbone alone is timed after the build on its best of ALONE_WINDOWS runs of ALONE_BATCHES
# batches: a report, so it stays short.
ALONE_WINDOWS, ALONE_BATCHES = 3, 8
SPACE_HELP = (
    "Free space there, point paths.cache_dir at a disk with room (paths.cache_dir=/big/disk/cache), "
    "cache fewer views (data.cache.views=2) or train without the cache (data.cache.mode=none)."
)
# split -> (its rows, its augmentation or None, views per image)
Splits = Mapping[str, tuple[Sequence[Record], Mapping[str, float] | None, int]]


class _Views(Dataset):
    """Each item: ``views`` copies of one resized image through a per-view uint8 transform, as
    stacked ``rgbx`` pixels (the forensic JPEG/blur augmentation, which has no batched form)."""

    def __init__(self, records: Sequence[Record], images: DecodedImages, view: Callable, views: int) -> None:
        self.records, self.images, self.view, self.views = records, images, view, views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images.get(self.records[i].path)  # decoded once, by the manifest scan where it could
        return rgbx(torch.stack([self.view(img) for _ in range(self.views)]))


class FeatureDataset(Dataset):
    """Serves cached features as ``{"features", "label"}``, one random view per item.

    The dict marks the batch as features, so the model runs its head only. A loader reads a
    whole batch at once (``__getitems__``, one gather from the memory map; pass ``collate``
    as its ``collate_fn``): item by item, reading took most of the head's training time.
    """

    def __init__(self, features: np.ndarray, labels: Sequence[int], scale: float | None = None) -> None:
        self.features, self.labels, self.scale = features, torch.tensor(list(labels)), scale

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        return {"features": batch["features"][0], "label": int(batch["label"][0])}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        n, views = len(indices), self.features.shape[1]
        # Seeded per epoch (ffd.training.callbacks.EpochSeed).
        v = torch.randint(views, (n,)).numpy() if views > 1 else np.zeros(n, dtype=np.int64)
        f = torch.from_numpy(self.features[np.asarray(indices), v]).float()
        return {"features": f.mul_(self.scale) if self.scale else f, "label": self.labels[list(indices)]}

    @staticmethod
    def collate(batch: Any) -> dict[str, torch.Tensor]:
        """The loader's ``collate_fn``: ``__getitems__`` made the batch already."""
        return batch


class FeatureCache:
    """A frozen backbone's features of the splits' views, built once per key and reused.

    Args:
        encoder: The frozen trunk (``FakeFaceClassifier.encoder()``).
        settings: ``data.cache`` (views, storage dtype, runtime, folder).
    """

    def __init__(self, encoder: Encoder, settings: CacheSettings) -> None:
        self.encoder, self.settings = encoder, settings
        self.runtime_report: dict[str, Any] | None = None  # the runtime choice (run_info.json)
        self.meta: dict[str, Any] | None = None  # the build's meta.json, with its folder

    def datasets(
        self, splits: Splits, images: DecodedImages, preprocess: Mapping[str, Any], precision: str,
        device: torch.device, seed: int, num_workers: int,
    ) -> dict[str, FeatureDataset]:  # fmt: skip
        """Each split's cached features, built now or found built.

        Args:
            splits: ``split -> (rows, augmentation or None, views)``.
            images: The resized images (decoded by the manifest scan where it kept them).
            preprocess: The model's preprocessing (the runners normalize the views with it).
            precision: The run's precision (the cache build's autocast).
            device: Where the backbone and the views run.
            seed: Seeds the views' augmentation: a data setting (the split's seed), so runs with
                other training seeds share the cache.
            num_workers: Loader workers for the per-view path (forensic JPEG/blur augmentation).
        """
        module = self.encoder.module.to(device).eval()
        first = next(rows for rows, _, _ in splits.values() if rows)
        probe = rgbx(torch.stack([images.get(r.path) for r in first[:16]])).to(device)
        enc, runtimes = self.encoder, Path(self.settings.dir) / "runtimes"
        choice = choose_runtime(self.settings.runtime, module, enc.fingerprint, enc.memory_format, precision,
                                probe, runtimes, pixels=preprocess)  # fmt: skip
        self.runtime_report = choice.report
        key = {
            "preprocess": preprocess, "augment": {s: a for s, (_, a, _) in splits.items()},
            "views": {s: v for s, (_, _, v) in splits.items()}, "precision": precision, "seed": seed,
            "runtime": choice.runner.label, "dtype": self.settings.dtype, "view_maker": "rgbx-gather",
            "decode": images.decode_size, "resize": "resize_pixels", "reencode": images.reencode,
        }  # fmt: skip
        folder = Path(self.settings.dir) / f"features-{feature_key(self.encoder, key, splits)}"
        build = _Build(choice.runner, splits, images, device, num_workers, seed, self.settings.dtype,
                       self.encoder.bound)  # fmt: skip
        store, meta = build_feature_cache(folder, build.compute, list(splits))
        self.meta = {**meta, "folder": str(folder)}
        labels = {s: [r.label for r in rows] for s, (rows, _, _) in splits.items()}
        return {s: FeatureDataset(store[s], labels[s], meta.get("scale")) for s in splits}


def feature_key(encoder: Encoder, settings: Mapping[str, Any], splits: Splits) -> str:
    """Cache key: the encoder's fingerprint, preprocessing/augmentation settings and the files' hashes."""
    h = hashlib.sha256()
    h.update(encoder.fingerprint.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for split in sorted(splits):
        h.update(split.encode())
        for r in splits[split][0]:
            h.update(r.sha256.encode())
    return h.hexdigest()[:20]


def build_feature_cache(
    folder: Path, compute: Callable[[Path], None], splits: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The complete cache in ``folder``: reused when there, else written by ``compute(out_folder)``
    (``_Build.compute``).

    One process builds a key's cache while every other one that wants it (a second run,
    the other DDP ranks of a node) waits on its lock file and then reuses it. The build
    goes into a temporary folder that is renamed to ``folder`` only when complete, so a
    killed or failed build leaves nothing a later run trusts.

    Returns:
        ``split -> read-only memmap of shape (n, views, C, h, w)``, and the build's ``meta.json``
        (its ``scale`` dequantizes uint8 features) with ``reused``: whether it was there already.

    Raises:
        FfdError: the cache folder is not writable, or its disk has too little free space.
    """
    cache_dir = folder.parent
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder.with_name(folder.name + ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("Another process is building the feature cache %s: waiting for it", folder)
            lock.acquire()
    except OSError as err:
        raise FfdError(
            f"Can't write the feature cache in {cache_dir} ({err.strerror or err}): set paths.cache_dir "
            "to a writable folder, or data.cache.mode=none to train without it."
        ) from err
    try:
        reused = (folder / META).exists()  # written last, inside the temporary folder
        if reused:
            log.info("Reusing feature cache %s", folder)
        else:
            _build_atomically(folder, compute)
    finally:
        lock.release()
    meta = {**json.loads((folder / META).read_text()), "reused": reused}
    return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in splits}, meta


def _build_atomically(folder: Path, compute: Callable[[Path], None]) -> None:
    """Run ``compute`` into ``<folder>.partial-<pid>``, then rename that to ``folder`` (under the lock)."""
    # Under the lock no one else builds this key: what is there is a killed build's.
    for stale in [folder, *folder.parent.glob(folder.name + ".partial-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir()
        compute(tmp)
        publish_folder(tmp, folder)  # every file on disk first: a crash never leaves a short cache
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise FfdError(
                f"The disk of {folder.parent} filled up while building the feature cache. {SPACE_HELP}"
            ) from err
        raise


@contextlib.contextmanager
def _npy_writer(path: Path, dtype: str, shape: tuple[int, ...]) -> Iterator[BinaryIO]:
    """A ``.npy`` file of ``shape``, its blocks allocated now, open for its data in order.

    Its blocks are reserved first so that a full disk is an error here, not a failed write
    later. The data go in by ``write``, not through a memory map, whose page fault per 4 KiB
    made writing a measurable share of the build.
    """
    np.lib.format.open_memmap(path, "w+", dtype, shape)  # writes the header, sizes the file
    size = path.stat().st_size
    with path.open("r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)
        fh.seek(size - math.prod(shape) * np.dtype(dtype).itemsize)
        yield fh


@dataclass
class _Build:
    """Everything one cache build needs (``FeatureCache.datasets``)."""

    runner: Runner  # RGBX views -> features, in the runtime and precision chosen
    splits: Splits
    images: DecodedImages
    device: torch.device
    num_workers: int
    seed: int
    dtype: str
    bound: float | None

    def compute(self, out: Path) -> None:
        """Compute the features of every (image, view) into ``out``, ``meta.json`` last.

        The views are made from the stacked images, one gather per view (``batch_views``), as
        uint8 pixels that the runner normalizes, the next batch's in a second thread while the
        backbone runs on this one. The runner is fed back to back (``Runner.map``: OpenVINO
        starts the next batch before this one is done), and torch's own work runs on one thread
        meanwhile (``Runner.beside``). The build's rate is reported against the backbone alone
        on one of its batches (``backbone_alone_views_per_s``). The files' space is reserved
        before the first feature is written, so a full disk is a message, never a crash.
        """
        start = time.perf_counter()
        n_views, store_s = 0, 0.0
        largest: torch.Tensor | None = None  # a batch of the build's size, to time the backbone alone on
        total = sum(len(records) * views for records, _, views in self.splits.values())
        scale = _scale(self.dtype, self.bound)
        bar = progress(None, "Building the feature cache", total=total, unit="view")
        # A private RNG: building the cache must not change the training run's random stream.
        with bar, torch.random.fork_rng(devices=[]), contextlib.ExitStack() as files, self.runner.beside():
            torch.random.default_generator.manual_seed(self.seed)  # CPU only: fork_rng restores only that
            generator = torch.Generator().manual_seed(self.seed)
            for split, (records, augment, views) in self.splits.items():
                store: BinaryIO | None = None
                batches = prefetched(self._view_batches(records, views, augment, generator))
                for x, f in self.runner.map(batches):
                    b = x.shape[0] // views
                    if store is None:
                        if n_views == 0:  # the first batch tells the feature size: is there room for all?
                            needed = total * f[0].numel() * np.dtype(self.dtype).itemsize
                            log.info("Feature cache: %d views x %d %s values = %.2f GiB", total, f[0].numel(),
                                     self.dtype, needed / 2**30)  # fmt: skip
                            _check_space(out, needed)
                        shape = (len(records), views, *f.shape[1:])
                        store = files.enter_context(_npy_writer(out / f"{split}.npy", self.dtype, shape))
                    tic = time.perf_counter()
                    store.write(_encode(f.view(b, views, *f.shape[1:]).cpu(), scale).data)
                    store_s += time.perf_counter() - tic
                    n_views += b * views
                    bar.update(b * views)
                    if largest is None or len(x) > len(largest):
                        largest = x
        if n_views != total:  # a runner that dropped a batch: never mark such a cache complete
            raise FfdError(f"The feature cache build computed {n_views} of {total} views; nothing was kept.")
        seconds = time.perf_counter() - start
        # The backbone alone on one of the build's batches, fed back to back (nothing else running, no
        # storing): the best of a few short windows, as the disk's write-back of the cache shares the cores.
        alone = None
        if largest is not None:
            alone = max(rate(self.runner, largest, ALONE_BATCHES) for _ in range(ALONE_WINDOWS))
        meta = {
            "views": n_views, "seconds": round(seconds, 2), "views_per_s": round(n_views / seconds, 1),
            "backbone_alone_views_per_s": round(alone, 1) if alone else None, "store_s": round(store_s, 2),
            "dtype": self.dtype, "scale": scale,
        }  # fmt: skip
        (out / META).write_text(json.dumps(meta))
        log.info(
            "Feature cache: %d views in %.1f s (%.0f views/s = %.0f %% of the backbone alone, %.0f views/s)",
            n_views, seconds, n_views / seconds, 100 * n_views / seconds / (alone or math.inf), alone or 0,
        )  # fmt: skip

    def _view_batches(
        self, records: Sequence[Record], views: int, augment: Mapping[str, float] | None,
        generator: torch.Generator,
    ) -> Iterator[torch.Tensor]:  # fmt: skip
        """Batches of ``rgbx`` views (images * views, H, W, 4), image by image: ~16 views each on a CPU
        (larger batches ran slower there in every runtime measured), ~64 on CUDA."""
        per_batch = max(1, (16 if self.device.type == "cpu" else 64) // views)
        if batched(augment):
            for i in range(0, len(records), per_batch):
                stacked = torch.stack([self.images.get(r.path) for r in records[i : i + per_batch]])
                yield batch_views(stacked.to(self.device, non_blocking=True), views, augment, generator)
            return
        # The runner normalizes: the views stay uint8 (this path has JPEG/blur steps, so never none).
        dataset = _Views(records, self.images, T.Compose(augment_steps(augment)), views)
        loader = DataLoader(dataset, per_batch, num_workers=self.num_workers, generator=generator)
        for batch in loader:
            yield batch.flatten(0, 1).to(self.device, non_blocking=True)


def _scale(dtype: str, bound: float | None) -> float | None:
    if dtype == "float16":
        return None
    if bound is None:
        raise ConfigError(
            "data.cache.dtype=uint8 needs a backbone whose features are bounded (one that ends in "
            "ReLU6, as MobileNetV2): this one's are not. Use data.cache.dtype=float16."
        )
    return bound / 255


def _encode(f: torch.Tensor, scale: float | None) -> np.ndarray:
    """Features in their storage dtype, C-contiguous (a channels-last backbone's come out strided)."""
    if scale is None:
        return f.half().contiguous().numpy()  # (torch converts faster than numpy)
    return (f / scale).round_().clamp_(0, 255).to(torch.uint8).contiguous().numpy()


def _check_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise FfdError(
            f"The feature cache needs {needed / 2**20:,.0f} MiB and {out.parent} has "
            f"{free / 2**20:,.0f} MiB free. {SPACE_HELP}"
        )
