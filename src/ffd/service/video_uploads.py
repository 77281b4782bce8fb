"""Scoring an uploaded video in the service: sampled frames, tracked face crops, one score.

The upload stays in memory (PyAV reads the bytes); frames are sampled and the face
cropped as the model's training run did (``ffd.data.video.crops.model_crop_settings``), each crop goes
through the service's batcher like an image, and the video's score aggregates the
frame scores. A video beyond the limits (``limits:``), or not one ffd reads, gets an ``unreadable``
row (HTTP 422); one whose request times out stops being decoded within a frame.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from anyio import to_thread

from ffd.data.decoding import Item, pixels
from ffd.data.facts import label_name, p_fake
from ffd.data.settings import Limits
from ffd.data.video.crops import CropSettings, face_crops, resolve_detector
from ffd.data.video.decode import VideoCancelled, VideoDecodeError
from ffd.deploy.rows import result_row
from ffd.metrics.video import AGGREGATES

LOCK_POLL_S = 0.05  # how often a request waiting for the detector looks whether it was cancelled


class VideoScorer:
    """Face crops of uploaded videos, scored through ``score`` (the batcher's).

    Args:
        settings: How frames are sampled and faces cropped.
        score: Coroutine scoring one decoded Item: its logit of fake.
        threshold_logit: The model's decision threshold, a logit (fake when a logit reaches it).
        band: The model's abstention band of logits (``uncertain`` inside it); None: none.
        limits: What an uploaded video may be.
    """

    def __init__(
        self,
        settings: CropSettings,
        score: Callable[[Item], Awaitable[float]],
        threshold_logit: float,
        band: Mapping[str, float] | None,
        limits: Limits,
    ) -> None:
        self.settings, self.detector = resolve_detector(settings)
        self.score, self.limits = score, limits
        self.threshold_logit, self.band = threshold_logit, band
        self.lock = threading.Lock()  # one detector, used from the decode threads

    def _crops(self, data: bytes, cancel: threading.Event) -> tuple[list[int], dict[int, Any]]:
        """The sampled frames and face crops of an upload (in a worker thread; one at a time: one detector).

        Raises:
            VideoDecodeError: unreadable, beyond the limits, or ``cancel`` set (while waiting for the
                detector too).
        """
        while not self.lock.acquire(timeout=LOCK_POLL_S):
            if cancel.is_set():
                raise VideoCancelled("cancelled while waiting for the face detector: the request timed out")
        try:
            sampled, crops, _ = face_crops(
                io.BytesIO(data), self.settings, self.detector, self.limits, cancel=cancel
            )
        finally:
            self.lock.release()
        return sampled, crops

    async def __call__(self, name: str, data: bytes, aggregate: str) -> dict[str, Any]:
        """The video's row (``ffd.deploy.rows.result_row``: p_fake, logit, label; with ``frames`` used,
        ``no_face``) and ``frame_results`` (each sampled frame's p_fake, logit, label, status)."""
        threshold, band = self.threshold_logit, self.band
        cancel = threading.Event()
        try:
            sampled, crops = await to_thread.run_sync(self._crops, data, cancel, abandon_on_cancel=True)
        except VideoDecodeError as err:
            row = result_row(name, "unreadable", str(err), None, threshold)
            return row | {"frames": 0, "no_face": 0, "frame_results": []}
        finally:
            # Answered, or given up (the service's timeout cancels this coroutine): a worker thread still
            # decoding the upload stops before its next frame.
            cancel.set()
        order = sorted(crops)
        # All at once: the crops go through the model together.
        items = [Item(Path(name), "ok", image=pixels(crops[i])) for i in order]
        logits = await asyncio.gather(*map(self.score, items))
        by_frame = dict(zip(order, logits, strict=True))
        frames = [
            {"frame": i, "p_fake": p_fake(by_frame[i]) if i in by_frame else None, "logit": by_frame.get(i),
             "status": "ok" if i in by_frame else "no_face",
             "label": label_name(by_frame[i], threshold, band) if i in by_frame else ""}
            for i in sampled
        ]  # fmt: skip
        counts = {"frames": len(order), "no_face": len(sampled) - len(order), "frame_results": frames}
        if not logits:
            message = f"no face in any of the {len(sampled)} sampled frames"
            return result_row(name, "no_face", message, None, threshold) | counts
        logit = float(AGGREGATES[aggregate](torch.tensor(logits, dtype=torch.float64)))
        message = f"{aggregate} of {len(logits)} frames"
        return result_row(name, "ok", message, logit, threshold, band) | counts
