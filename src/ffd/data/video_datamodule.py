"""The data module on a video data set: ``FaceDataModule`` whose ``synthetic`` makes FF++-style videos."""

from __future__ import annotations

from ffd.data.datamodule import FaceDataModule
from ffd.data.synthetic_video import ensure_synthetic_video


class VideoDataModule(FaceDataModule):
    """``FaceDataModule`` (same settings) on videos: face crops per sampled frame, split by video and person.

    ``synthetic`` (``identities``, ``methods``, ``frames``, ``size``, ``seed``, ``splits``) generates
    a synthetic FF++-style set into ``root`` first (``ffd.data.synthetic_video``), unless it
    is there already; None for real videos.
    """

    def prepare_data(self) -> None:
        if self.synthetic:
            ensure_synthetic_video(self.root, **self.synthetic)
