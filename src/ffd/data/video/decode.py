"""Decoding videos with PyAV (FFmpeg's libraries) and choosing which frames to keep.

A video is read in two steps, and every failure of either is a ``VideoDecodeError`` with the reason:

1. ``probe``: open it, by allow-list (``ffd.data.formats.VIDEO_CONTAINERS``: FFmpeg's ``format_whitelist``
   and local files only, so no playlist, image or other format opens, and nothing reads another file),
   and check it against ``Limits`` before any frame is decoded: its frame size and duration from the
   header, its frame count from the container, else its duration x frame rate (a constant one), else by
   counting the video stream's packets (demuxing only: ~100x faster than decoding).
2. ``decoded_frames``: one decoding pass from the start that stops after the last frame wanted, each
   frame as it is decoded (the caller keeps what it needs of it, never all of them), checking a
   ``threading.Event`` between frames so a caller that gave up stops the work.

PyAV's errors are ``av.FFmpegError`` subclasses that mix in various builtins (ValueError, OSError,
EOFError, MemoryError, LookupError, ...), or none: any exception from the decoding becomes a
``VideoDecodeError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image

from ffd.data.formats import VIDEO_CONTAINERS, VIDEO_DEMUXERS, VIDEO_SUFFIXES
from ffd.errors import ConfigError

if TYPE_CHECKING:
    from ffd.data.settings import Limits

# What av.open is told: only these demuxers, only local files (a file object needs no protocol).
OPEN_OPTIONS = {"format_whitelist": VIDEO_DEMUXERS, "protocol_whitelist": "file"}
READS = ", ".join(s.lstrip(".") for suffixes in VIDEO_CONTAINERS.values() for s in suffixes)
_CANCEL_EVERY = 64  # packets counted between looks at the cancel event


class VideoDecodeError(ValueError):
    """A file could not be opened or decoded as a video, or is beyond the limits."""


class VideoCancelled(VideoDecodeError):
    """The caller set the cancel event: decoding stopped."""


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


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learnt of a video without decoding it.

    Attributes:
        container: The demuxer that opened it (a key of ``VIDEO_CONTAINERS``).
        frames: The container's frame count, else the video stream's packets.
        width: Frame width from the header (0 if it gives none).
        height: Frame height from the header (0 if it gives none).
        seconds: Duration: the header's, else the packets' span; None if neither is known.
        counted: Whether ``frames`` was counted from the packets (the container has no count).
    """

    container: str
    frames: int
    width: int
    height: int
    seconds: float | None
    counted: bool


def _why(err: BaseException) -> str:
    """The reason an exception from FFmpeg gives, without its error number or the file's name."""
    if isinstance(err, FileNotFoundError):
        return "no such file"
    text = getattr(err, "strerror", None) or str(err) or "no reason given"
    return f"not a readable video ({type(err).__name__}: {text})"


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Any exception of the decoding (PyAV's, whatever builtin it mixes in, or none) as a VideoDecodeError."""
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as err:  # FFmpegError subclasses mix in any builtin, or none
        raise VideoDecodeError(_why(err)) from err


def _open(source: Source) -> Any:
    """The opened container, by allow-list; never from a playlist, an image or another protocol."""
    import av

    if isinstance(source, str | Path):
        target: Any = os.path.abspath(source)  # absolute: a name like "a:b.mp4" is not a protocol's
    else:
        source.seek(0)
        target = source
    try:
        container = av.open(target, "r", options=OPEN_OPTIONS, metadata_errors="replace")
    except FileNotFoundError:
        raise VideoDecodeError("no such file") from None
    except Exception as err:  # see _decode_errors
        # ArgumentError: FFmpeg probed a format that is not on the allow-list.
        why = "FFmpeg reads it as another format" if isinstance(err, av.ArgumentError) else _why(err)
        raise VideoDecodeError(f"not a video ffd reads ({READS}): {why}") from err
    if container.format.name not in VIDEO_CONTAINERS:  # the allow-list should have refused it
        container.close()
        raise VideoDecodeError(
            f"not a video ffd reads ({READS}): FFmpeg opened it as {container.format.name}"
        )
    if (stream := _video_stream(container)) is None:
        container.close()
        raise VideoDecodeError("no video stream in the file")
    if stream.codec_context is None:  # PyAV has no decoder for the stream's codec
        container.close()
        raise VideoDecodeError("not a readable video: FFmpeg has no decoder for its video codec")
    return container


def _video_stream(container: Any) -> Any:
    """The first video stream that is not a cover picture (an MP4's or MKV's attached artwork)."""
    import av

    cover = av.stream.Disposition.attached_pic
    return next((s for s in container.streams.video if not s.disposition & cover), None)


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise VideoCancelled(f"cancelled while {what}: the caller stopped waiting")


def _header_seconds(container: Any, stream: Any) -> float | None:
    if container.duration:  # AV_TIME_BASE units (microseconds)
        return float(container.duration) / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _refuse(what: str, limit: str, value: float) -> VideoDecodeError:
    return VideoDecodeError(f"{what}, more than limits.{limit}={value:g} allows")


def _check_size(width: int, height: int, limits: Limits | None) -> None:
    if limits is not None and width * height > limits.max_video_pixels:
        raise _refuse(f"its frames are {width}x{height} = {width * height} pixels", "max_video_pixels",
                      limits.max_video_pixels)  # fmt: skip


def _check_header(container: Any, stream: Any, limits: Limits | None) -> VideoInfo:
    """The header's facts, refused when they are beyond the limits."""
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    seconds = _header_seconds(container, stream)
    frames = int(stream.frames or 0)
    info = VideoInfo(container.format.name, frames, width, height, seconds, counted=not frames)
    if limits is None:
        return info
    _check_size(width, height, limits)
    if seconds is not None and seconds > limits.max_video_seconds:
        raise _refuse(f"it lasts {seconds:.1f} s", "max_video_seconds", limits.max_video_seconds)
    if frames > limits.max_video_frames:
        raise _refuse(f"it has {frames} frames", "max_video_frames", limits.max_video_frames)
    rate = _steady_rate(stream)
    if not frames and seconds is not None and rate:
        estimate = round(seconds * rate)
        if estimate > limits.max_video_frames:
            raise _refuse(f"it has about {estimate} frames ({seconds:.1f} s at {rate:g} frames/s)",
                          "max_video_frames", limits.max_video_frames)  # fmt: skip
    return info


def _steady_rate(stream: Any) -> float | None:
    """The frame rate, where FFmpeg's two readings of it agree (a constant frame rate); None where they
    differ (a variable rate: the header's can be far off, so duration x rate would refuse a video by
    mistake, and its packets are counted instead)."""
    average, guessed = stream.average_rate, stream.guessed_rate
    if not average or not guessed or abs(float(average) / float(guessed) - 1) > 0.01:
        return None
    return float(average)


def _count_packets(
    container: Any, stream: Any, info: VideoInfo, limits: Limits | None, cancel: threading.Event | None
) -> VideoInfo:
    """The frame count from the video stream's packets (demuxed, not decoded), refused as soon as the
    count or the packets' time span passes the limits."""
    count, first, last = 0, None, None
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's flush packet
            continue
        count += 1
        if (stamp := packet.pts if packet.pts is not None else packet.dts) is not None:
            first = stamp if first is None else min(first, stamp)
            last = stamp if last is None else max(last, stamp)
        if count % _CANCEL_EVERY == 0:
            _check_cancel(cancel, "counting the frames")
        if limits is not None and count > limits.max_video_frames:
            raise _refuse(f"it has more than {limits.max_video_frames} frames", "max_video_frames",
                          limits.max_video_frames)  # fmt: skip
    span = float((last - first) * stream.time_base) if first is not None and stream.time_base else None
    if limits is not None and span is not None and span > limits.max_video_seconds:
        raise _refuse(f"its frames span {span:.1f} s", "max_video_seconds", limits.max_video_seconds)
    seconds = info.seconds if info.seconds is not None else span
    return dataclasses.replace(info, frames=count, seconds=seconds)


def probe(source: Source, limits: Limits | None = None, cancel: threading.Event | None = None) -> VideoInfo:
    """A video's container, frame count, frame size and duration, without decoding a frame.

    Raises:
        VideoDecodeError: not a video ffd reads, unreadable, beyond ``limits`` (the message names the
            setting), or cancelled (``VideoCancelled``).
    """
    _check_cancel(cancel, "opening the video")
    with _decode_errors(), _open(source) as container:
        stream = _video_stream(container)
        info = _check_header(container, stream, limits)
        if info.counted:  # mkv, webm, mpeg: no count in the container
            info = _count_packets(container, stream, info, limits, cancel)
    return info


def count_frames(path: Source, limits: Limits | None = None) -> int:
    """Frames in a video: the container's count when it has one, else its packets (nothing decoded)."""
    return probe(path, limits).frames


def decoded_frames(
    source: Source,
    indices: Sequence[int],
    limits: Limits | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 array of shape (height, width, 3)) of each wanted frame, in order, decoded in one
    pass from the start that stops after the last wanted one. Only the frame being yielded is held.

    Raises:
        VideoDecodeError: unreadable, a frame larger than ``limits.max_video_pixels``, or cancelled
            (``VideoCancelled``, checked before each frame is decoded).
    """
    wanted, last = set(indices), max(indices, default=-1)
    if last < 0:
        return
    _check_cancel(cancel, "opening the video")
    with _decode_errors(), _open(source) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        if limits is not None:  # the decoder refuses a larger frame, even one the header did not announce
            stream.codec_context.options = {"max_pixels": str(limits.max_video_pixels)}
        frames = container.decode(stream)
        for i in range(last + 1):
            _check_cancel(cancel, f"decoding frame {i}")
            frame = next(frames, None)
            if frame is None:
                return  # fewer frames than the container said
            _check_size(frame.width, frame.height, limits)
            if i in wanted:
                yield i, frame.to_ndarray(format="rgb24")


def read_frames(
    path: Source,
    indices: Sequence[int],
    limits: Limits | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, Image.Image]]:
    """(index, RGB frame) for each wanted index, decoding the video once from the start
    (``decoded_frames`` as PIL images).

    Raises:
        VideoDecodeError: the file is missing, not a video, has no video stream, or is beyond ``limits``.
    """
    for i, array in decoded_frames(path, indices, limits, cancel):
        yield i, Image.fromarray(array)
