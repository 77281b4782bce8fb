"""The feature cache: a frozen backbone's output, computed once per image and view.

A frozen backbone computes the same output for the same input every epoch,
and it is >95 % of the seed recipe's compute. The feature cache runs it once
per image and *view*: K augmented views per training image (the
same flip/rotate distribution as the uncached path) and the one plain view
for val/test. Training then draws one view per image per epoch and trains
the head alone, so augmentation stays real and epochs cost almost nothing.
The cache sits in memory-mapped ``.npy`` files (fp16) under a key made of
everything that changes the features; any change gives a new key, so a stale
cache is never read. A file lock per key lets one process build while others
that need the same cache wait and reuse it; a build becomes visible only when
complete (atomic rename).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ffd.data.images import DecodedImages
from ffd.data.records import Record
from ffd.errors import FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)

META = "meta.json"  # the build's last file
SPACE_HELP = (
    "Free space there, point paths.cache_dir at a disk with room (paths.cache_dir=/big/disk/cache), "
    "cache fewer views (data.views=2) or train without the cache (data.cache=none)."
)


@dataclass
class Encoder:
    """A frozen backbone and a fingerprint of everything about it that shapes its output."""

    module: nn.Module
    fingerprint: str
    memory_format: torch.memory_format = torch.contiguous_format


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Views(Dataset):
    """Each item: ``views`` augmented copies of one resized image, stacked."""

    def __init__(self, records: Sequence[Record], images: DecodedImages, view: Callable, views: int) -> None:
        self.records, self.images, self.view, self.views = records, images, view, views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images.get(self.records[i].path)  # decoded once, by the manifest scan where it could
        return torch.stack([self.view(img) for _ in range(self.views)])


class FeatureDataset(Dataset):
    """Serves cached features as ``{"features", "label"}``, one random view per item.

    The dict marks the batch as features, so the model runs its head only.
    """

    def __init__(self, features: np.ndarray, labels: Sequence[int]) -> None:
        self.features, self.labels = features, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        views = self.features.shape[1]
        v = (
            int(torch.randint(views, ())) if views > 1 else 0
        )  # seeded per epoch (ffd.runs.callbacks.EpochSeed)
        return {"features": torch.from_numpy(self.features[i, v].astype(np.float32)), "label": self.labels[i]}


def feature_key(
    encoder: Encoder, settings: Mapping[str, Any], records: Mapping[str, Sequence[Record]]
) -> str:
    """Cache key: the encoder's fingerprint, preprocessing/augmentation settings and the files' hashes."""
    h = hashlib.sha256()
    h.update(encoder.fingerprint.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for split in sorted(records):
        h.update(split.encode())
        for r in records[split]:
            h.update(r.sha256.encode())
    return h.hexdigest()[:20]


def build_feature_cache(
    folder: Path, compute: Callable[[Path], None], splits: Sequence[str]
) -> dict[str, np.ndarray]:
    """The complete cache in ``folder``: reused when there, else written by ``compute(out_folder)``
    (``partial(compute_features, ...)``).

    One process builds a key's cache while every other one that wants it (a second run,
    the other DDP ranks of a node) waits on its lock file and then reuses it. The build
    goes into a temporary folder that is renamed to ``folder`` only when complete, so a
    killed or failed build leaves nothing a later run trusts.

    Returns:
        ``split -> read-only memmap of shape (n, views, C, h, w)``.

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
            "to a writable folder, or data.cache=none to train without it."
        ) from err
    try:
        if (folder / META).exists():  # written last, inside the temporary folder
            log.info("Reusing feature cache %s", folder)
        else:
            _build_atomically(folder, compute)
    finally:
        lock.release()
    return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in splits}


def _build_atomically(folder: Path, compute: Callable[[Path], None]) -> None:
    """Run ``compute`` into ``<folder>.partial-<pid>``, then rename that to ``folder`` (under the lock)."""
    # Under the lock no one else builds this key: what is there is a killed build's.
    for stale in [folder, *folder.parent.glob(folder.name + ".partial-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir()
        compute(tmp)
        tmp.rename(folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise FfdError(
                f"The disk of {folder.parent} filled up while building the feature cache. {SPACE_HELP}"
            ) from err
        raise


def _reserve(path: Path, needed: int) -> None:
    """Allocate a file's blocks now: writing a memory map onto a full disk would kill the process
    (SIGBUS) instead of raising."""
    with path.open("r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, needed)


def compute_features(
    out: Path,
    encoder: Encoder,
    splits: Mapping[str, tuple[Sequence[Record], Callable, int]],
    images: DecodedImages,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    num_workers: int,
    seed: int,
) -> None:
    """Compute the features of every (image, view) into ``out``, ``meta.json`` last.

    The files' space is reserved before the first feature is written, so a full disk is
    a message, never a crash while writing.

    Args:
        splits: ``split -> (records, view transform, views)``.
        images: The resized images (decoded by the manifest scan where it kept them).
        autocast: The training precision's forward context, so cached features equal
            the ones the uncached path would compute.
        seed: Seeds the views' augmentation: a data setting (the split's seed), so runs
            with other training seeds share the cache.
    """
    start = time.perf_counter()
    module = encoder.module.to(device).eval()
    n_views = 0
    total = sum(len(records) * views for records, _, views in splits.values())
    bar = progress(None, "Building the feature cache", total=total, unit="view")
    # A private RNG: building the cache must not change the training run's random stream.
    with bar, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: fork_rng restores only that
        for split, (records, view, views) in splits.items():
            loader = DataLoader(
                _Views(records, images, view, views),
                batch_size=max(1, 64 // views),
                num_workers=num_workers,
                generator=torch.Generator().manual_seed(seed),
            )
            store: np.memmap | None = None
            row = 0
            for batch in loader:
                b = batch.shape[0]
                x = batch.flatten(0, 1).to(device, non_blocking=True)
                with torch.no_grad(), autocast():
                    f = module(x.contiguous(memory_format=encoder.memory_format)).float()
                if store is None:
                    if n_views == 0:  # the first batch tells the feature size: is there room for all?
                        _check_space(out, total * f[0].numel() * 2)
                    path = out / f"{split}.npy"
                    store = np.lib.format.open_memmap(
                        path, "w+", np.float16, (len(records), views, *f.shape[1:])
                    )
                    _reserve(path, path.stat().st_size)
                store[row : row + b] = f.view(b, views, *f.shape[1:]).cpu().numpy().astype(np.float16)
                row += b
                n_views += b * views
                bar.update(b * views)
            if store is not None:
                store.flush()
    seconds = time.perf_counter() - start
    (out / META).write_text(json.dumps({"views": n_views, "seconds": round(seconds, 2)}))
    log.info("Feature cache: %d views in %.1f s (%.0f views/s)", n_views, seconds, n_views / seconds)


def _check_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise FfdError(
            f"The feature cache needs {needed / 2**20:,.0f} MiB and {out.parent} has "
            f"{free / 2**20:,.0f} MiB free. {SPACE_HELP}"
        )
