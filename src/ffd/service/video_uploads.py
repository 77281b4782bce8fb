"""Scoring an uploaded video in the service: sampled frames, tracked face crops, one score.

The upload stays in memory (PyAV reads the bytes); frames are sampled and the face
cropped as the model's training run did (``ffd.data.video.crops.model_crop_settings``), each crop goes
through the service's batcher like an image, and the video's score aggregates the
frame scores.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch
from anyio import to_thread

from ffd.data.decoding import Item, pixels
from ffd.data.facts import label_name
from ffd.data.video.crops import CropSettings, face_crops, resolve_detector
from ffd.data.video.decode import VideoDecodeError
from ffd.metrics.video import AGGREGATES


class VideoScorer:
    """Face crops of uploaded videos, scored through ``score`` (the batcher's).

    Args:
        settings: How frames are sampled and faces cropped.
        score: Coroutine scoring one decoded Item.
        threshold: The model's decision threshold.
    """

    def __init__(
        self, settings: CropSettings, score: Callable[[Item], Awaitable[float]], threshold: float
    ) -> None:
        self.settings, self.detector = resolve_detector(settings)
        self.score, self.threshold = score, threshold
        self.lock = threading.Lock()  # one detector, used from the decode threads

    def _crops(self, data: bytes) -> tuple[list[int], dict[int, Any]]:
        with self.lock:
            sampled, crops, _ = face_crops(io.BytesIO(data), self.settings, self.detector)
        return sampled, crops

    async def __call__(self, name: str, data: bytes, aggregate: str) -> dict[str, Any]:
        """The video's row (``p_fake``, ``label``, ``frames`` used, ``no_face``) and ``frame_results``."""
        row: dict[str, Any] = {"path": name, "p_fake": None, "label": "", "frames": 0, "no_face": 0}
        try:
            sampled, crops = await to_thread.run_sync(self._crops, data)
        except VideoDecodeError as err:
            return row | {"status": "unreadable", "message": str(err), "frame_results": []}
        order = sorted(crops)
        scores = [await self.score(Item(Path(name), "ok", image=pixels(crops[i]))) for i in order]
        by_frame = dict(zip(order, scores, strict=True))
        frames = [
            {"frame": i, "p_fake": by_frame.get(i), "status": "ok" if i in by_frame else "no_face",
             "label": label_name(by_frame[i], self.threshold) if i in by_frame else ""}
            for i in sampled
        ]  # fmt: skip
        row |= {"frames": len(order), "no_face": len(sampled) - len(order), "frame_results": frames}
        if not scores:
            return row | {
                "status": "no_face",
                "message": f"no face in any of the {len(sampled)} sampled frames",
            }
        p = float(AGGREGATES[aggregate](torch.tensor(scores, dtype=torch.float64)))
        message = f"{aggregate} of {len(scores)} frames"
        return row | {"p_fake": p, "label": label_name(p, self.threshold), "status": "ok", "message": message}
