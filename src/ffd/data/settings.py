"""Typed settings of the data: what an input may be (``limits:`` of conf/common.yaml), how the data
module's loaders read, and which cache takes repeated work out of the epoch loop (``conf/data/ciplab.yaml``'s
``loader:`` and ``cache:``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ffd import rules
from ffd.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """What ffd accepts from an input file or an upload (``limits:`` in conf/common.yaml): beyond these a
    file is refused with the reason, before it takes the memory or time it would need.

    Attributes:
        max_pixels: An image (or a video frame) with more pixels is refused before it is decoded.
        min_side: An image with a shorter side is refused.
        max_aspect: An image whose longer side is more than this times its shorter side is refused.
        max_video_seconds: A longer video is refused before any frame is decoded.
        max_video_frames: A video with more frames is refused.
        max_video_pixels: A video whose frames have more pixels is refused.
    """

    max_pixels: int
    min_side: int
    max_aspect: float
    max_video_seconds: float
    max_video_frames: int
    max_video_pixels: int

    def __post_init__(self) -> None:
        rules.check_all({f"limits.{f.name}": getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Limits:
        """The limits of a task's config (its ``limits`` node)."""
        return cls(**{f.name: node[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are read.

    Attributes:
        batch_size: Images per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: Pin host memory for faster GPU copies; None = when CUDA is available.
        decode_draft: Decode JPEGs at reduced size (libjpeg DCT scaling, never below the input
            size); False decodes every file at full size.
    """

    batch_size: int
    num_workers: int
    pin_memory: bool | None
    decode_draft: bool

    def __post_init__(self) -> None:
        rules.check_all(
            {"data.loader.batch_size": self.batch_size, "data.loader.num_workers": self.num_workers}
        )


@dataclass(frozen=True)
class CacheSettings:
    """Which cache a run uses, and how the feature cache is built.

    Attributes:
        mode: ``auto`` (features for a frozen backbone, else none), ``none``, ``pixels`` (decode and
            resize once) or ``features`` (the frozen backbone runs once per image and view).
        views: Augmented views cached per training image (features).
        dtype: How features are stored: ``float16``, or ``uint8`` (bounded features quantized).
        runtime: Where the cache build runs the backbone (``ffd.engine.runtimes``).
        dir: The cache folder (features, backbone runtimes, video crops).
    """

    mode: str
    views: int
    dtype: str
    runtime: str
    dir: str

    def __post_init__(self) -> None:
        rules.check_all({f"data.cache.{k}": getattr(self, k) for k in ("mode", "views", "dtype", "runtime")})

    def resolved(self, frozen: bool) -> str:
        """The cache a run uses: ``auto`` is features for a frozen backbone, else none.

        Raises:
            ConfigError: features for a backbone that trains.
        """
        if self.mode == "features" and not frozen:
            raise ConfigError(
                "data.cache.mode=features needs a frozen backbone (model.freeze=frozen): a backbone that "
                "trains changes its features every step. Use data.cache.mode=pixels to decode images once."
            )
        if self.mode == "auto":
            return "features" if frozen else "none"
        return self.mode
