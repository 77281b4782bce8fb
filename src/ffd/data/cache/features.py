"""The feature cache: a frozen backbone's output, computed once per image and view.

A frozen backbone computes the same output for the same input every epoch,
and it is >95 % of the seed recipe's compute. The feature cache runs it once
per image and *view*: K augmented views per training image (the
same flip/rotate distribution as the uncached path) and the one plain view
for val/test. Training then draws one view per image per epoch and trains
the head alone, so augmentation stays real and epochs cost almost nothing.
The cache sits in memory-mapped ``.npy`` files (fp16) under a key made of
everything that changes the features; any change gives a new key, so a stale
cache is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ffd.data.images import DecodedImages
from ffd.data.records import Record
from ffd.progress import progress

log = logging.getLogger(__name__)


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
    folder: Path,
    encoder: Encoder,
    splits: Mapping[str, tuple[Sequence[Record], Callable, int]],
    images: DecodedImages,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    num_workers: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Compute and store the features of every (image, view), or reuse a complete cache in ``folder``.

    Args:
        splits: ``split -> (records, view transform, views)``.
        images: The resized images (decoded by the manifest scan where it kept them).
        autocast: The training precision's forward context, so cached features equal
            the ones the uncached path would compute.
        seed: Seeds the views' augmentation: a data setting (the split's seed), so runs
            with other training seeds share the cache.

    Returns:
        ``split -> read-only memmap of shape (n, views, C, h, w)``.
    """
    meta = folder / "meta.json"
    if meta.exists():  # written last: its presence means the cache is complete
        log.info("Reusing feature cache %s", folder)
        return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in splits}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
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
                    shape = (len(records), views, *f.shape[1:])
                    store = np.lib.format.open_memmap(folder / f"{split}.npy", "w+", np.float16, shape)
                store[row : row + b] = f.view(b, views, *f.shape[1:]).cpu().numpy().astype(np.float16)
                row += b
                n_views += b * views
                bar.update(b * views)
            if store is not None:
                store.flush()
    seconds = time.perf_counter() - start
    meta.write_text(json.dumps({"views": n_views, "seconds": round(seconds, 2)}))
    log.info(
        "Feature cache: %d views in %.1f s (%.0f views/s) -> %s", n_views, seconds, n_views / seconds, folder
    )
    return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in splits}


def once_per_node(
    trainer: L.Trainer | None, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Run ``build`` in one process while the others wait, then in the others (which find it built).

    Global rank 0 first; then each node's local rank 0, which builds its own copy when
    nodes share no disk and finds rank 0's when they do; then the rest open it.
    """
    if trainer is None or trainer.world_size == 1:
        return build()
    store = build() if trainer.is_global_zero else None
    trainer.strategy.barrier("ffd_feature_cache")
    if store is None and trainer.local_rank == 0:
        store = build()
    trainer.strategy.barrier("ffd_feature_cache_node")
    return store or build()
