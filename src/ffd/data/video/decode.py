"""Decoding videos with PyAV (FFmpeg's libraries) and choosing which frames to keep."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ffd.errors import ConfigError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class VideoDecodeError(ValueError):
    """A file could not be opened or decoded as a video."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_files(folder: Path) -> list[Path]:
    """Every video file under a folder, recursively, by name."""
    return sorted(p for p in folder.rglob("*") if is_video(p) and p.is_file())


def sample_indices(total: int, frames: int | None, stride: int | None) -> list[int]:
    """The frame indices to keep from a video of ``total`` frames.

    Args:
        total: Frames in the video.
        frames: How many: spread evenly over the whole video (DeepfakeBench's protocol);
            with ``stride``, the first ``frames`` of every stride-th frame. None keeps all
            that the stride gives.
        stride: Keep every stride-th frame from the first; None samples evenly.
    """
    if frames is not None and frames < 1 or stride is not None and stride < 1:
        raise ConfigError(f"video.frames={frames} and video.stride={stride} must be >= 1 (or null).")
    if stride is not None:
        return list(range(0, total, stride))[:frames]
    if frames is None or frames >= total:
        return list(range(total))
    # The centres of `frames` equal parts of the video: never two picks of one frame.
    return sorted({int(i) for i in np.floor((np.arange(frames) + 0.5) * total / frames)})


Source = str | Path | BinaryIO  # a file, or a video's bytes in memory (io.BytesIO: an upload)


def _open(source: Source):
    import av

    if isinstance(source, str | Path):
        return av.open(str(source))
    source.seek(0)
    return av.open(source)


def count_frames(path: Source) -> int:
    """Frames in a video: the container's count when it has one, else counted by decoding."""
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))
    except (OSError, IndexError, ValueError) as err:  # av.FFmpegError subclasses OSError/ValueError
        raise VideoDecodeError(_why(err)) from err


def read_frames(path: Source, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
    """(index, RGB frame) for each wanted index, decoding the video once from the start.

    Raises:
        VideoDecodeError: the file is missing, not a video, or has no video stream.
    """
    wanted, last = set(indices), max(indices, default=-1)
    try:
        with _open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream in the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    yield i, frame.to_image()
                if i >= last:
                    return
    except VideoDecodeError:
        raise
    except (OSError, IndexError, ValueError) as err:
        raise VideoDecodeError(_why(err)) from err


def _why(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    return f"not a readable video ({type(err).__name__}: {err})"
