"""Dynamic batching: images from concurrent requests go through the model together.

Each request hands its decoded images to ``Batcher.score`` and awaits their
p_fake. One task gathers what has arrived, up to ``max_batch`` images, waiting
at most ``max_wait_s`` after the first, and runs the model on them in the
model's one thread (images of different sizes go in separate forward passes, as
in ``ffd.predict``). The event loop never waits on the model.

All of the model's work, loading included, belongs in that one thread: torch
runs a team of OpenMP threads per calling thread, and with two (the main
thread's and the model thread's) the forward pass ran far slower on a small CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ffd.data.decoding import Item
from ffd.engine.scoring import score_files

T = TypeVar("T")


class Batcher:
    def __init__(
        self,
        score: Callable[[torch.Tensor], torch.Tensor],
        max_batch: int,
        max_wait_s: float,
        model_thread: ThreadPoolExecutor,
    ):
        self._score, self.max_batch, self.max_wait_s = score, max_batch, max_wait_s
        self._pool = model_thread  # one worker: the thread the model was loaded in
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[float]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.stats = {"images": 0, "forward_passes": 0, "largest_batch": 0}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def score(self, item: Item) -> float:
        """The logit of fake of one decoded item (its uint8 image (H, W, 3)), scored in a batch."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other work on the model (Grad-CAM) in its thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _score_items(self, items: list[Item]) -> list[tuple[int, list[float]]]:
        """(batch size, logits) of each forward pass over the items, in order (one image size a pass)."""
        return [
            (len(b.ok), b.output.tolist() if b.output is not None else [])
            for b in score_files(items, self._score, self.max_batch)
        ]

    async def _gather(self) -> list[tuple[Item, asyncio.Future[float]]]:
        pending = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(pending) < self.max_batch:
            try:
                pending.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                pending.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [(image, future) for image, future in pending if not future.done()]  # timed-out requests

    async def _run(self) -> None:
        while True:
            pending = await self._gather()
            pending.sort(key=lambda p: tuple(p[0].image.shape))  # type: ignore[union-attr]  # a size per pass
            try:
                passes = await self.in_model_thread(self._score_items, [item for item, _ in pending])
            except Exception as err:  # the requests see the error; the service goes on
                for _, future in pending:
                    if not future.done():
                        future.set_exception(err)
                continue
            scores = [p for _, batch in passes for p in batch]
            self.stats["images"] += len(scores)
            self.stats["forward_passes"] += len(passes)
            self.stats["largest_batch"] = max([self.stats["largest_batch"], *(n for n, _ in passes)])
            for (_, future), p in zip(pending, scores, strict=True):
                if not future.done():
                    future.set_result(p)
