"""Dynamic batching: images from concurrent requests go through the model together.

Each request first takes places for its images (``Batcher.admit``): at most ``max_queue`` images
are in the service at once (decoding, waiting or in the model), and a request that would pass that
is refused at once (``Overloaded``, HTTP 429) rather than queued without end. It then hands its
decoded images to ``Batcher.score`` and awaits their logits. One task gathers what has arrived, up
to ``max_batch`` images, waiting at most ``max_wait_s`` after the first, and starts the model on
them in the model's one thread (images of different sizes go in separate forward passes, as in
``ffd.predict``); while the model runs, the next batch gathers. A runtime that runs in threads
of its own (OpenVINO, onnxruntime: ``Scorer.in_flight`` 2) gets the next batch as soon as it has
this one, so a stream that is done early takes the next batch's images instead of waiting for the
others: with one batch at a time, 8 clients' batches of a few images left a core idle. The event
loop never waits on the model.

All of the model's work in torch, loading included, belongs in that one thread: torch runs a team
of OpenMP threads per calling thread, and with two (the main thread's and the model thread's) the
forward pass ran far slower on a small CPU.

If that task ever ends (a bug), every waiting request gets ``Stopped`` (HTTP 503) and ``problem``
says why, for ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ffd.data.decoding import Item
from ffd.engine.scorers import Started
from ffd.engine.scoring import score_files

T = TypeVar("T")
Pending = tuple[Item, "asyncio.Future[float]"]
# The longest a gathering batch waits for an image still being decoded (``Batcher.coming``): about
# one upload's decode, so the forward pass takes it too instead of running again for it alone.
COMING_WAIT_S = 0.05


class Overloaded(Exception):
    """The service holds ``max_queue`` images already; ``retry_after`` s is a fair time to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stopped(Exception):
    """The batching task is not running: nothing can be scored."""


class Batcher:
    """Scores decoded images in batches across requests (see the module's docstring).

    Args:
        start: Stacked uint8 images (N, H, W, 3) -> their logits, started (``Scorer.start_logit``).
        max_batch: Images per forward pass at most.
        max_wait_s: How long the first image of a batch waits for others.
        max_queue: Images admitted at once at most.
        model_thread: The model's one thread.
        in_flight: Batches in the model at once (``Scorer.in_flight``).
    """

    def __init__(
        self,
        start: Callable[[torch.Tensor], Started],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        model_thread: ThreadPoolExecutor,
        in_flight: int = 1,
    ):
        self._start, self.max_batch, self.max_wait_s, self.max_queue = start, max_batch, max_wait_s, max_queue
        self._pool = model_thread  # one worker: the thread the model was loaded in
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._slots = asyncio.Semaphore(in_flight)
        self._batches: dict[asyncio.Task[None], list[Pending]] = {}  # in the model now
        self._last_done = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.admitted = 0  # images taken in and not yet answered
        self._coming = 0  # images being decoded now
        self.decode_s = 0.0  # recent time from an upload's turn to decode to its image (queueing included)
        self.seconds_per_image = 0.0  # recent model time per image, for Retry-After
        self.stats = {"images": 0, "forward_passes": 0, "largest_batch": 0}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ffd-batcher")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # an end /healthz reported
                await self._task

    @property
    def problem(self) -> str | None:
        """Why nothing can be scored (the batching task ended), or None while it runs."""
        if self._task is None:
            return "the batcher has not started"
        if not self._task.done():
            return None
        if self._task.cancelled():
            return "the batcher was cancelled"
        err = self._task.exception()
        return f"the batcher stopped on {type(err).__name__}: {err}" if err else "the batcher stopped"

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Hold places for ``images`` while the block runs; ``Overloaded`` when they are not free,
        ``Stopped`` when nothing is scored any more."""
        if problem := self.problem:
            raise Stopped(problem)
        if self.admitted + images > self.max_queue:
            wait = max(1, math.ceil(self.admitted * self.seconds_per_image))
            raise Overloaded(
                f"the service holds {self.admitted} images already and takes {self.max_queue} at most "
                f"(serve.max_queue): retry in {wait} s, or send fewer images per request", wait
            )  # fmt: skip
        self.admitted += images
        try:
            yield
        finally:
            self.admitted -= images

    async def score(self, item: Item) -> float:
        """The logit of fake of one decoded item (its uint8 image (H, W, 3)), scored in a batch."""
        if problem := self.problem:
            raise Stopped(problem)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other work on the model (Grad-CAM) in its thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _start_passes(self, items: list[Item]) -> list[tuple[int, Started]]:
        """In the model thread: a forward pass started for each image size among the items, in order,
        with its number of images."""
        passes = score_files(items, self._start, self.max_batch)
        return [(len(b.ok), b.output) for b in passes if b.output is not None]

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """While the block runs, an image is being decoded and will be scored soon: a batch that forms
        meanwhile waits a little for it (``_gather``)."""
        self._coming += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._coming -= 1
            took = time.perf_counter() - start
            self.decode_s = took if not self.decode_s else 0.8 * self.decode_s + 0.2 * took

    async def _gather(self) -> list[Pending]:
        """What waits, up to ``max_batch``: the first image waits ``max_wait_s`` for others, and as long
        as a decode takes (``COMING_WAIT_S`` at most) while images are being decoded: a forward pass
        on a few images costs about what one on one image does."""
        pending = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(pending) < self.max_batch:
            try:
                pending.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            wait = (
                max(self.max_wait_s, min(self.decode_s, COMING_WAIT_S)) if self._coming else self.max_wait_s
            )
            left = start + wait - loop.time()
            if left <= 0:
                break
            try:
                pending.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [(image, future) for image, future in pending if not future.done()]  # timed-out requests

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # a place in the model: then what waits is the next batch
            batch = await self._gather()
            if not batch:
                self._slots.release()
                continue
            batch.sort(key=lambda p: tuple(p[0].image.shape))  # type: ignore[union-attr]  # a size per pass
            task = asyncio.create_task(self._through_model(batch))
            self._batches[task] = batch
            task.add_done_callback(self._left_model)

    def _left_model(self, task: asyncio.Task[None]) -> None:
        self._batches.pop(task, None)
        self._slots.release()

    async def _through_model(self, batch: list[Pending]) -> None:
        """One batch started, finished and answered; an error goes to its requests, the service goes on."""
        start = time.perf_counter()
        try:
            passes = await self.in_model_thread(self._start_passes, [item for item, _ in batch])
            logits: list[float] = []
            for _, started in passes:
                trunk = await asyncio.wrap_future(started.trunk)
                logits += (await self.in_model_thread(started.finish, trunk)).tolist()
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        # Model time per image, for Retry-After: a batch that started while another ran counts from then.
        now = time.perf_counter()
        per_image = (now - max(start, self._last_done)) / len(batch)
        self._last_done = now
        self.seconds_per_image = (
            0.8 * self.seconds_per_image + 0.2 * per_image if self.stats["images"] else per_image
        )
        self.stats["images"] += len(logits)
        self.stats["forward_passes"] += len(passes)
        self.stats["largest_batch"] = max([self.stats["largest_batch"], *(n for n, _ in passes)])
        for (_, future), p in zip(batch, logits, strict=True):
            if not future.done():
                future.set_result(p)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The batching task ended: nothing waiting will be scored, so every waiter hears why."""
        why = Stopped("the service is shutting down" if self._stopping else (self.problem or "stopped"))
        for in_model_task in self._batches:
            in_model_task.cancel()
        in_model = [p for batch in self._batches.values() for p in batch]
        waiting = [*in_model, *(self._queue.get_nowait() for _ in range(self._queue.qsize()))]
        for _, future in waiting:
            if not future.done():
                future.set_exception(why)
