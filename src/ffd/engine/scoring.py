"""The one path that scores files: decode ahead, batch, run, yield. Every caller goes through it.

Calibration, eval, predict (images and video crops), Grad-CAM, the export's parity check, the
robustness sweep, the service's batches and the bench all call ``score_files``: files are
decoded (``ffd.data.decoding.Decoder``) in a second thread while the model runs on the previous
batch (PIL and libjpeg release the GIL), grouped in input order into batches of one image size,
and each batch's stacked pixels go through ``run`` (a scorer's ``p_fake`` or ``logits``, Grad-CAM).
Files that could not be decoded stay in their batch as items without an image, so every caller
reports them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from ffd.data.decoding import Decoder, Item
from ffd.errors import FfdError

T = TypeVar("T")


@dataclass
class Scored(Generic[T]):
    """One batch: its items in input order (failures included), the stacked pixels (N, H, W, 3) of
    the ones that decoded, and ``run``'s output on them (None when none decoded)."""

    items: list[Item]
    images: torch.Tensor | None
    output: T | None

    @property
    def ok(self) -> list[Item]:
        """The items with an image, in the order of ``images`` (and of ``output``)."""
        return [it for it in self.items if it.image is not None]

    def all_ok(self, why: str) -> T:
        """``output``, when every item decoded; else an FfdError: ``why`` and the first failure."""
        if failed := [it for it in self.items if it.image is None]:
            raise FfdError(f"{why}: {failed[0].path}: {failed[0].message} ({len(failed)} in this batch).")
        assert self.output is not None
        return self.output


def prefetched(items: Iterable[T]) -> Iterator[T]:
    """The items of an iterable, the next one made in a second thread while the caller works on
    this one."""
    source = iter(items)
    done = object()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, source, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, source, done)
            yield item  # type: ignore[misc]


def batches(items: Iterable[Item], batch_size: int) -> Iterator[tuple[list[Item], torch.Tensor | None]]:
    """Items grouped in input order, each group with the stacked pixels (N, H, W, 3) of its ok items.

    A group closes when it holds ``batch_size`` ok items, or before an image of another size; the
    tensor is None for a group with none (the trailing failures).
    """
    group: list[Item] = []

    def close() -> tuple[list[Item], torch.Tensor | None]:
        ok = [it.image for it in group if it.image is not None]
        return list(group), torch.stack(ok) if ok else None

    shape = None
    for item in items:
        if item.image is not None:
            if shape is not None and item.image.shape != shape:
                yield close()
                group.clear()
            shape = item.image.shape
        group.append(item)
        if sum(it.image is not None for it in group) == batch_size:
            yield close()
            group.clear()
    if group:
        yield close()


def score_files(
    sources: Iterable[str | Path | Item],
    run: Callable[[torch.Tensor], T],
    batch_size: int,
    decode: Decoder | None = None,
) -> Iterator[Scored[T]]:
    """Each batch of ``sources``, in input order, with ``run``'s output on its stacked pixels.

    Args:
        sources: Files (decoded by ``decode``, the next batch in a second thread while ``run``
            works on this one), or Items decoded already (the service's uploads, perturbed images).
        run: Stacked uint8 pixels (N, H, W, 3) -> the batch's output (p_fake, logits, heatmaps).
        batch_size: Images per batch at most.
        decode: How files become Items; needed when ``sources`` holds files.
    """

    def item(source: str | Path | Item) -> Item:
        if isinstance(source, Item):
            return source
        if decode is None:
            raise TypeError("score_files needs a Decoder for files")
        return decode(source)

    grouped = batches(map(item, sources), batch_size)
    for group, x in prefetched(grouped) if decode is not None else grouped:
        yield Scored(group, x, run(x) if x is not None else None)
