"""A trunk in one runtime and precision, behind one interface; its speed and its distance from torch."""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

PROBE_BATCHES = 3  # timed batches per candidate (after one warm-up batch)
PROBE_SECONDS = 1.0
# Images per request at most, for a runtime that runs requests side by side (its streams): a batch's
# requests are shared among the streams as each one frees up, so a stream slowed by other work takes
# fewer of them (the size is measured: see docs/performance.md).
PART = 4


class PixelsIn(nn.Module):
    """uint8 RGBX pixels (N, H, W, 4) (``ffd.data.transforms.rgbx``) -> normalized float images
    (N, 3, H, W) in ``memory_format``, by the model's preprocessing (``mean``, ``std``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, preprocess: Mapping[str, Any], memory_format: torch.memory_format) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(preprocess["mean"])).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(list(preprocess["std"])).view(1, 3, 1, 1) * 255)
        self.memory_format = memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :3].permute(0, 3, 1, 2).float()  # NHWC: already channels-last
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


@dataclass
class Runner:
    """A trunk in one runtime and precision: normalized images (N, 3, H, W), or RGBX pixels
    (N, H, W, 4) for one made with ``pixels``, -> fp32 features. One caller at a time."""

    name: str
    precision: str
    run: Callable[[torch.Tensor], torch.Tensor]
    # A batch -> its features later: returns once the runtime has the batch (OpenVINO, onnxruntime), so the
    # caller can start the next one while this one runs. None: the runtime works in the caller's thread.
    start: Callable[[torch.Tensor], Future[torch.Tensor]] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run(x)

    @contextlib.contextmanager
    def beside(self) -> Iterator[None]:
        """Work done in torch while this runtime runs (views, conversions) on one thread.

        onnxruntime and OpenVINO have their own threads, one per core; torch's idle OpenMP
        threads would spin on the same cores after each op and slow the runtime down.
        """
        if self.name == "torch":  # torch runs the trunk: its threads are the runtime's
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch with its features, in order. A runtime that runs several requests at once
        (``start``: OpenVINO, onnxruntime) has the next batch before this one finishes, so no core waits
        between them."""
        if self.start is None:
            for x in batches:
                yield x, self(x)
            return
        started: deque[tuple[torch.Tensor, Future[torch.Tensor]]] = deque()
        try:
            for x in batches:
                started.append((x, self.start(x)))
                if len(started) > 1:
                    x, features = started.popleft()
                    yield x, features.result()
            while started:
                x, features = started.popleft()
                yield x, features.result()
        finally:  # given up on (an error, a caller that stopped): nothing is left running
            wait([features for _, features in started])


def part_size(images: int, streams: int) -> int:
    """Images per request for a batch: ``PART``, or fewer, so that a small batch (the service's, of a
    few images) still runs on every stream: batches of 2-4 images ran ~1.6x faster split over two
    streams than in one request (docs/performance.md)."""
    return max(1, min(PART, math.ceil(images / streams)))


def in_parts(
    x: torch.Tensor,
    streams: int,
    queued: Callable[[torch.Tensor], Future[np.ndarray]],
    waiter: ThreadPoolExecutor,
) -> Future[torch.Tensor]:
    """x's features, later: x in requests of ``part_size`` images, each queued to the streams as
    ``queued`` does, and put back together in order by ``waiter`` (one thread, no work of its own)."""
    parts = [queued(part) for part in torch.split(x, part_size(len(x), streams))]
    return waiter.submit(lambda: torch.from_numpy(np.concatenate([p.result() for p in parts])))


def as_array(x: torch.Tensor) -> Any:
    """A runner's input as the contiguous numpy array onnxruntime and OpenVINO take (fp32 or uint8)."""
    return (x if x.dtype == torch.uint8 else x.float()).contiguous().cpu().numpy()


def relative_error(f: torch.Tensor, reference: torch.Tensor) -> float:
    """max |f - reference| / max |reference|."""
    return float((f.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def rate(runner: Runner, x: torch.Tensor, batches: int = PROBE_BATCHES) -> float:
    """Images/s of a runner on batch x, fed back to back (``Runner.map``): one warm-up batch, then
    up to ``batches`` timed ones (fewer once PROBE_SECONDS have passed: a slow candidate needs no
    precise figure to lose)."""
    runner(x)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()

    def fed() -> Iterator[torch.Tensor]:
        for i in range(batches):
            if i and time.perf_counter() - start >= PROBE_SECONDS:
                return
            yield x

    done = sum(1 for _ in runner.map(fed()))
    sync()
    return done * x.shape[0] / (time.perf_counter() - start)
