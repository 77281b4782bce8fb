"""Videos that are not what they claim, or are too much: the allow-list of containers, the limits (refused
before a frame is decoded), decoding once and frame by frame, cancellation, fuzzed inputs that must end as
a VideoDecodeError (never another exception), the service's 422, and crops that don't depend on threads."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import LIMITS, stand_in_served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ffd.data.video.decode as decode
from ffd.data.faces import Face
from ffd.data.formats import VIDEO_CONTAINERS
from ffd.data.records import Record
from ffd.data.synthetic import draw_face
from ffd.data.synthetic_video import Motion, render_clip
from ffd.data.video.crops import INDEX, CropSettings, extract, face_crops
from ffd.data.video.decode import VideoCancelled, VideoDecodeError, decoded_frames, probe, read_frames
from ffd.data.video.frames import expand_videos
from ffd.data.video.track import Tracker, track

SETTINGS = CropSettings(frames=4, stride=None, scale=1.3, size=32, detector="haar")
# Tiny clips in every container ffd reads: (file name, PyAV format, encoder).
TINY = [
    ("tiny.mp4", "mp4", "libx264"),
    ("tiny.mkv", "matroska", "libx264"),  # no frame count in the container
    ("tiny.webm", "webm", "libvpx"),
    ("tiny.avi", "avi", "mpeg4"),
    ("tiny.mpg", "mpeg", "mpeg2video"),
]
TINY_FRAMES = 12


class CentreFace:
    """A stand-in detector: one face in the middle of every frame (cheap, so crops are made)."""

    name = "centre"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls = delay, 0

    def detect(self, img: Image.Image) -> list[Face]:
        self.calls += 1
        time.sleep(self.delay)
        w, h = img.size
        return [Face((w / 4, h / 4, 3 * w / 4, 3 * h / 4), 1.0)]


def encode(path: Path, frames: Iterable[np.ndarray], fmt: str, codec: str, rate: int = 25) -> Path:
    """Frames (uint8 RGB, all one size) as a video made by PyAV."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                if codec == "libx264":
                    stream.options = {"preset": "ultrafast"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        assert stream is not None
        container.mux(stream.encode())
    return path


def gradient(width: int, height: int, n: int) -> Iterable[np.ndarray]:
    """n frames of a moving gradient (each frame differs: a decoder has work to do)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    for t in range(n):
        yield np.broadcast_to((x + y + 9 * t) % 256, (height, width, 3)).astype(np.uint8)


def constant(path: Path, width: int, height: int, seconds: float, rate: int = 25) -> Path:
    """A constant-colour MKV, encoded fast: one intra frame, its packet muxed once per frame."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryslow", "crf": "51", "x264-params": "keyint=1"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(frame.planes, (90, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        first = [*stream.encode(frame), *stream.encode()][0]
        data = bytes(first)
        for i in range(round(seconds * rate)):
            packet = av.Packet(data)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream, packet.is_keyframe = first.time_base, stream, True
            container.mux(packet)
    return path


class _Pipe(io.RawIOBase):
    """A write-only, unseekable file: the matroska muxer can't go back to write the duration."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def unannounced_mkv(path: Path, n: int) -> Path:
    """An MKV with neither a frame count nor a duration in its header: only its packets tell."""
    pipe = _Pipe()
    with av.open(pipe, "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in gradient(32, 32, n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(bytes(pipe.data))
    return path


def variable_rate_mkv(path: Path) -> Path:
    """A 60 s MKV of 160 frames: 100 in its first second, then one a second; its header says 1000/s."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stamps = [i * 10 for i in range(100)] + [1000 + i * 1000 for i in range(60)]
        for stamp, array in zip(stamps, gradient(32, 32, len(stamps)), strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("clips")
    made = {name: encode(out / name, gradient(64, 48, TINY_FRAMES), fmt, codec) for name, fmt, codec in TINY}
    made["hd40s.mkv"] = constant(out / "hd40s.mkv", 1920, 1080, 40)
    made["uhd.mkv"] = encode(out / "uhd.mkv", gradient(3840, 2160, 2), "matroska", "libx264")
    made["unannounced.mkv"] = unannounced_mkv(out / "unannounced.mkv", 100)
    made["vfr.mkv"] = variable_rate_mkv(out / "vfr.mkv")
    made["long.mkv"] = encode(out / "long.mkv", gradient(64, 48, 60), "matroska", "libx264")
    return made


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Path]) -> dict[str, Path]:
    """Files that are not videos ffd reads (an ffconcat playlist names a real video)."""
    out = tmp_path_factory.mktemp("others")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out / "photo.png")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out / "photo.jpg")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out / "anim.gif")
    (out / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{clips['tiny.mp4']}'\n")
    (out / "notes.txt").write_text("hello, this is not a video\n")
    (out / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (out / "empty.mp4").write_bytes(b"")
    (out / "sound.mp4").write_bytes(_audio_only())
    return {p.name: p for p in out.iterdir()}


def _audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def limited(**caps: float) -> Any:
    return dataclasses.replace(LIMITS, **caps)


# -- the containers ffd reads, and nothing else ------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _, _ in TINY])
def test_every_container_ffd_reads_decodes_from_a_path_and_from_bytes(
    clips: dict[str, Path], name: str
) -> None:
    for source in (clips[name], io.BytesIO(clips[name].read_bytes())):
        info = probe(source, LIMITS)
        assert info.container in VIDEO_CONTAINERS and (info.width, info.height) == (64, 48)
        assert info.frames == TINY_FRAMES and info.counted == (name in ("tiny.mkv", "tiny.webm", "tiny.mpg"))
        frames = list(read_frames(source, [0, 5, 11], LIMITS))
        assert [i for i, _ in frames] == [0, 5, 11] and frames[0][1].size == (64, 48)
        sampled, crops, boxes = face_crops(source, SETTINGS, CentreFace(), LIMITS)
        assert sampled == sorted(crops) == sorted(boxes) == [1, 4, 7, 10]
        assert {c.size for c in crops.values()} == {(32, 32)}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("photo.png", "not a video ffd reads (mp4, m4v, mov, mkv, webm, avi, mpg, mpeg)"),
        ("photo.jpg", "not a video ffd reads"),
        ("anim.gif", "not a video ffd reads"),
        ("list.ffconcat", "not a video ffd reads"),  # a playlist would read the file it names
        ("notes.txt", "not a video ffd reads"),
        ("random.bin", "not a video ffd reads"),
        ("empty.mp4", "not a readable video"),
        ("sound.mp4", "no video stream"),
    ],
)
def test_other_files_are_refused_by_name(others: dict[str, Path], name: str, reason: str) -> None:
    for source in (others[name], io.BytesIO(others[name].read_bytes())):
        with pytest.raises(VideoDecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            face_crops(source, SETTINGS, CentreFace(), LIMITS)
    with pytest.raises(VideoDecodeError, match="no such file"):
        probe(others[name].with_name("missing.mp4"))


# -- fuzzing: every input ends as a VideoDecodeError with a reason, or decodes -------------------------

FUZZ_LIMITS = dataclasses.replace(LIMITS, max_video_frames=2000, max_video_pixels=1280 * 720)
FUZZ = settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_seen: Counter = Counter()


def decodes_or_says_why(data: bytes, as_file: bool) -> str:
    """'ok' or 'refused'; any exception but a VideoDecodeError with a message fails the test."""
    with tempfile.TemporaryDirectory() as folder:
        source: Any = io.BytesIO(data)
        if as_file:
            source = Path(folder) / "fuzzed.mp4"
            source.write_bytes(data)
        try:
            sampled, crops, _ = face_crops(source, SETTINGS, CentreFace(), FUZZ_LIMITS)
        except VideoDecodeError as err:
            assert str(err).strip(), repr(err)
            _seen["refused"] += 1
            return "refused"
    assert sampled and set(crops) <= set(sampled)
    _seen["ok"] += 1
    return "ok"


@FUZZ
@given(data=st.binary(max_size=4096), as_file=st.booleans())
def test_fuzz_random_bytes(data: bytes, as_file: bool) -> None:
    decodes_or_says_why(data, as_file)


@pytest.mark.parametrize("name", [name for name, _, _ in TINY])
@FUZZ
@given(cut=st.floats(0, 1), as_file=st.booleans())
def test_fuzz_truncated(clips: dict[str, Path], name: str, cut: float, as_file: bool) -> None:
    data = clips[name].read_bytes()
    decodes_or_says_why(data[: int(cut * len(data))], as_file)


@pytest.mark.parametrize("name", [name for name, _, _ in TINY])
@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1,
                      max_size=12), as_file=st.booleans())  # fmt: skip
def test_fuzz_flipped_bytes(clips: dict[str, Path], name: str, flips: list, as_file: bool) -> None:
    data = bytearray(clips[name].read_bytes())
    for where, value in flips:
        data[int(where * len(data))] = value
    decodes_or_says_why(bytes(data), as_file)


@FUZZ
@given(
    name=st.sampled_from(["photo.png", "photo.jpg", "list.ffconcat", "notes.txt"]),
    tail=st.binary(max_size=64),
    as_file=st.booleans(),
)
def test_fuzz_other_files(others: dict[str, Path], name: str, tail: bytes, as_file: bool) -> None:
    assert decodes_or_says_why(others[name].read_bytes() + tail, as_file) == "refused"


# -- limits: refused before a frame is decoded, quickly, naming the setting --------------------------


def refused_quickly(source: Any, limits: Any, setting: str) -> None:
    start = time.perf_counter()
    with pytest.raises(VideoDecodeError, match=f"limits.{setting}="):
        face_crops(source, SETTINGS, CentreFace(), limits)
    assert time.perf_counter() - start < 0.5  # a loose bound: nothing was decoded


def test_limits_refuse_before_decoding(clips: dict[str, Path]) -> None:
    hd, uhd = clips["hd40s.mkv"], clips["uhd.mkv"]
    info = probe(hd)
    assert (info.width, info.height, info.seconds, info.frames) == (1920, 1080, 40.0, 1000)
    for source in (hd, io.BytesIO(hd.read_bytes())):
        refused_quickly(source, limited(max_video_seconds=30), "max_video_seconds")
        refused_quickly(source, limited(max_video_frames=999), "max_video_frames")  # duration x frame rate
        refused_quickly(source, limited(max_video_pixels=1920 * 1080 - 1), "max_video_pixels")
    refused_quickly(uhd, limited(max_video_pixels=1920 * 1080), "max_video_pixels")
    refused_quickly(clips["tiny.mp4"], limited(max_video_frames=TINY_FRAMES - 1), "max_video_frames")  # count
    # No count and no duration in the header: the packets are counted, and their time span measured.
    unannounced = clips["unannounced.mkv"]
    assert probe(unannounced).frames == 100 and probe(unannounced).seconds == pytest.approx(3.96)
    refused_quickly(unannounced, limited(max_video_frames=99), "max_video_frames")
    refused_quickly(unannounced, limited(max_video_seconds=3), "max_video_seconds")
    # A variable frame rate: duration x the header's rate (60,000 frames) would refuse it by mistake.
    vfr = clips["vfr.mkv"]
    assert probe(vfr, limited(max_video_frames=1000)).frames == 160
    refused_quickly(vfr, limited(max_video_frames=159), "max_video_frames")
    # Within the limits, a 4K video decodes (one frame at a time).
    sampled, crops, _ = face_crops(uhd, SETTINGS, CentreFace(), LIMITS)
    assert sampled == [0, 1] and crops[1].size == (32, 32)


def test_the_decoder_refuses_frames_larger_than_the_limit(clips: dict[str, Path]) -> None:
    """Even where the header's size is not checked: FFmpeg's max_pixels makes the decoder refuse them."""
    with pytest.raises(VideoDecodeError, match="not a readable video"):
        list(decoded_frames(clips["tiny.mp4"], [0], limited(max_video_pixels=64 * 48 - 1)))


def test_the_limits_reach_training_and_the_cache(clips: dict[str, Path], tmp_path: Path) -> None:
    """expand_videos turns a refused video into an unreadable row and goes on with the others."""
    rows = [Record(str(clips[n]), 0, "videos", video=str(clips[n])) for n in ("hd40s.mkv", "tiny.mp4")]
    out = expand_videos(rows, SETTINGS, tmp_path, limited(max_video_seconds=30))
    assert out[0].status == "unreadable" and "limits.max_video_seconds=30" in out[0].reason
    assert out[1].video == rows[1].video and out[1].status in ("ok", "no_face")  # haar: no face in a gradient
    assert not list((tmp_path / "video-crops").glob("*.partial-*"))


# -- decoding once, frame by frame ---------------------------------------------------------------------


class _Counting:
    """A container that counts the packets demuxed and the frames decoded through it."""

    def __init__(self, real: Any, counts: Counter) -> None:
        self.real, self.counts = real, counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> _Counting:
        self.counts["opened"] += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self.real.close()

    def demux(self, *args: Any) -> Any:
        for packet in self.real.demux(*args):
            self.counts["packets"] += 1
            yield packet

    def decode(self, *args: Any) -> Any:
        for frame in self.real.decode(*args):
            self.counts["frames"] += 1
            yield frame


def test_an_mkv_is_decoded_once_up_to_its_last_sampled_frame(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: Counter = Counter()
    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda source: _Counting(real_open(source), counts))
    sampled, crops, _ = face_crops(clips["long.mkv"], SETTINGS, CentreFace(), LIMITS)  # 60 frames, no count
    assert sampled == [7, 22, 37, 52] and sorted(crops) == sampled
    # The count came from the packets (60 and the demuxer's flush packet), then one decoding pass that
    # stopped after frame 52.
    assert counts == {"opened": 2, "packets": 61, "frames": 53}, counts
    counts.clear()
    face_crops(clips["tiny.mp4"], SETTINGS, CentreFace(), LIMITS)  # the container's count: no demuxing
    assert counts == {"opened": 2, "frames": 11}, counts


def test_the_tracker_is_online() -> None:
    me, other = Face((10, 10, 50, 50), 1.0), Face((100, 10, 130, 40), 1.0)
    moved = Face((14, 12, 54, 52), 1.0)
    tracker = Tracker()
    seen = [
        tracker.update(faces) for faces in [[me, other], [Face((90, 0, 160, 70), 1.0), moved], [], [moved]]
    ]
    assert (
        seen
        == [me, moved, None, moved]
        == track([[me, other], [Face((90, 0, 160, 70), 1.0), moved], [], [moved]])
    )
    assert tracker.last == moved


# -- cancellation --------------------------------------------------------------------------------------


def test_a_cancelled_extraction_stops_within_a_frame(clips: dict[str, Path], tmp_path: Path) -> None:
    detector = CentreFace(delay=0.02)
    cancel, result = threading.Event(), {}
    everything = dataclasses.replace(SETTINGS, frames=None)  # all 60 frames: ~1.2 s of detection

    def run() -> None:
        try:
            extract(clips["long.mkv"], everything, tmp_path, LIMITS, detector, cancel=cancel)
        except VideoDecodeError as err:
            result["error"], result["at"] = err, time.perf_counter()

    worker = threading.Thread(target=run)
    worker.start()
    while detector.calls < 3:
        time.sleep(0.005)
    calls, start = detector.calls, time.perf_counter()
    cancel.set()
    worker.join(5)
    assert not worker.is_alive() and isinstance(result["error"], VideoCancelled)
    assert str(result["error"]).startswith("cancelled") and result["at"] - start < 0.3
    assert detector.calls <= calls + 1 and not list((tmp_path / "video-crops").glob("*/"))  # nothing kept


def test_a_timed_out_upload_stops_being_decoded(clips: dict[str, Path]) -> None:
    """The service's timeout cancels VideoScorer's coroutine: its worker thread stops, and frees the
    detector for the next request."""
    from ffd.service.video_uploads import VideoScorer

    async def score(_: Any) -> float:
        return 0.5

    scorer = VideoScorer(dataclasses.replace(SETTINGS, frames=None), score, 0.5, None, LIMITS)
    scorer.detector = detector = CentreFace(delay=0.02)
    data = clips["long.mkv"].read_bytes()

    async def upload(timeout: float) -> dict:
        async with asyncio.timeout(timeout):
            return await scorer("clip.mkv", data, "mean")

    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        asyncio.run(upload(0.2))
    assert time.perf_counter() - start < 1
    calls = detector.calls
    assert scorer.lock.acquire(timeout=1)  # the worker let go of the detector
    time.sleep(0.1)
    assert detector.calls <= calls + 1 < 60
    # A request that times out while another holds the detector gives up waiting for it.
    with pytest.raises(TimeoutError):
        asyncio.run(upload(0.2))
    time.sleep(0.2)
    calls = detector.calls
    scorer.lock.release()
    time.sleep(0.2)
    assert detector.calls == calls
    detector.delay = 0
    row = asyncio.run(upload(30))
    assert row["status"] == "ok" and row["frames"] == 60


def test_the_service_answers_422_for_what_it_does_not_read(
    clips: dict[str, Path], others: dict[str, Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient
    from omegaconf import OmegaConf

    from ffd.config import compose_config
    from ffd.service.app import create_app
    from ffd.service.settings import Settings

    served = stand_in_served(lambda x: np.zeros(len(x)), 32)
    settings_ = Settings.from_config(OmegaConf.to_container(compose_config("serve").serve, resolve=True))
    limits = limited(max_video_seconds=30)
    app = create_app(served, settings_, ThreadPoolExecutor(1), SETTINGS, limits)  # type: ignore[arg-type]
    with TestClient(app) as client:
        for name, data, reason in [
            ("hd.mkv", clips["hd40s.mkv"].read_bytes(), "limits.max_video_seconds=30"),
            ("photo.mp4", others["photo.png"].read_bytes(), "not a video ffd reads"),
            ("list.mp4", others["list.ffconcat"].read_bytes(), "not a video ffd reads"),
            ("cut.mp4", clips["tiny.mp4"].read_bytes()[:700], "not a"),
        ]:
            answer = client.post("/v1/predict_video", files={"file": (name, data)})
            assert answer.status_code == 422, answer.text
            row = answer.json()["result"]
            assert row["status"] == "unreadable" and reason in row["message"], row


# -- the crop cache: durable, and the same whatever the threads ---------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd (Linux)")
def test_crops_are_fsynced_before_the_rename(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(self: Path, target: Any) -> Any:
        events.append(f"rename {self} {target}")
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    crops = extract(clips["tiny.mp4"], SETTINGS, tmp_path, LIMITS, CentreFace())
    folder = crops.crops[1].parent
    tmp = f"{folder}.partial-{os.getpid()}"
    renamed = events.index(f"rename {tmp} {folder}")
    before = {e.removeprefix("fsync ") for e in events[:renamed]}
    assert before == {tmp, f"{tmp}/{INDEX}", *(f"{tmp}/{i:05d}.png" for i in (1, 4, 7, 10))}
    assert events[renamed - 1] == f"fsync {tmp}" and events[renamed + 1 :] == [f"fsync {folder.parent}"]


def face_clip(path: Path, size: tuple[int, int], seed: int) -> Path:
    """8 frames of a drawn face moving, letterboxed to ``size`` (width, height)."""
    side = min(size)
    motion = Motion((0.05, 0.03), (40.0, 30.0), (0.0, 1.0), 0.03, 2.0, (), seed)
    frames, _ = render_clip(draw_face(np.random.default_rng([seed, 3])), motion, 8, side)
    canvas = np.full((size[1], size[0], 3), 120, np.uint8)
    left = (size[0] - side) // 2
    boxed = []
    for frame in frames:
        canvas[:, left : left + side] = frame
        boxed.append(canvas.copy())
    return encode(path, boxed, "mp4", "libx264")


def test_each_thread_detects_with_its_own_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    import ffd.data.video.frames as frames

    built: list[CentreFace] = []
    monkeypatch.setattr(frames, "make_detector", lambda name: built.append(CentreFace()) or built[-1])
    first = CentreFace()
    shared = frames.PerThreadDetector("centre", first)
    used: dict[int, Any] = {}
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        for _ in range(3):
            shared.detect(Image.new("RGB", (8, 8)))
        used[threading.get_ident()] = shared._local.detector

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 3 and len({id(d) for d in used.values()}) == 4 and first in used.values()
    assert [d.calls for d in used.values()] == [3] * 4


def test_crops_do_not_depend_on_the_threads(tmp_path: Path) -> None:
    """mtcnn (whose smallest face is set per image) on videos of mixed sizes: 1 and 4 threads, the same
    boxes."""
    pytest.importorskip("facenet_pytorch")
    sizes = [(64, 64), (160, 120), (320, 240), (480, 360), (64, 64), (320, 240)]
    rows = []
    for k, size in enumerate(sizes):
        clip = face_clip(tmp_path / f"clip{k}.mp4", size, seed=k)
        rows.append(Record(str(clip), 0, "videos", video=str(clip)))
    mtcnn = dataclasses.replace(SETTINGS, detector="mtcnn")
    boxes = {}
    for workers in (1, 4):
        cache = tmp_path / f"cache{workers}"
        expand_videos(rows, mtcnn, cache, LIMITS, workers=workers)
        indexes = [json.loads(p.read_text()) for p in (cache / "video-crops").glob(f"*/{INDEX}")]
        boxes[workers] = {Path(i["video"]).name: i["boxes"] for i in indexes}
    assert len(boxes[1]) == len(sizes) and sum(map(len, boxes[1].values())) >= 8, boxes[1]
    assert boxes[4] == boxes[1]


@pytest.mark.slow
def test_a_long_hd_video_takes_little_memory(clips: dict[str, Path], tmp_path: Path) -> None:
    """The 40 s 1080p MKV through face_crops in a child process: its peak memory grows by less than
    two dozen of its frames would take (each 6 MiB as RGB)."""
    import subprocess
    import sys

    script = (
        "import resource, sys, time\n"
        "from conftest import LIMITS\n"
        "from test_video_limits import SETTINGS, CentreFace\n"
        "from ffd.data.video.crops import face_crops\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        "sampled, crops, _ = face_crops(sys.argv[1], SETTINGS, CentreFace(), LIMITS)\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(len(sampled), len(crops), grew // 1024, round(time.perf_counter() - start, 2))\n"
    )
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(clips["hd40s.mkv"])], capture_output=True,
                          text=True, env=env, check=True, cwd=tests)  # fmt: skip
    sampled, crops, grew_mib, _ = done.stdout.split()
    assert (sampled, crops) == ("4", "4") and int(grew_mib) < 150, done.stdout
