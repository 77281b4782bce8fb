"""Synthetic deepfake videos in the FaceForensics++ layout, for tests and the demo.

A real clip shows one drawn face (``ffd.data.synthetic.draw_face``) that drifts,
zooms, tilts and blinks in front of the camera, with sensor noise, H.264-encoded
(CRF 23, like FF++'s ``c23``). A fake ``TTT_SSS.mp4`` replays target TTT's clip
(the same motion, blinks and noise) with a region of source SSS's face pasted in,
as a face swap does; the paste's alignment and colour flicker slightly from frame
to frame, the way per-frame swaps do. How much is pasted depends on the method::

    Deepfakes       the whole inner face, feathered and colour-matched
    FaceSwap        eyes, nose and mouth, feathered, half colour-matched
    Face2Face       nose and mouth, soft and colour-matched
    NeuralTextures  the mouth, soft and colour-matched

Identities come in pairs (0, 1), (2, 3), ...; each pair gives the fakes ``000_001``
and ``001_000`` of every method, so both people of a pair must share a split, as
FF++'s official split files keep them. Files::

    <out>/original_sequences/youtube/c23/videos/000.mp4
    <out>/manipulated_sequences/<method>/c23/videos/000_001.mp4
    <out>/splits/{train,val,test}.json   (with splits=True: FF++'s lists of id pairs)
    <out>/boxes.json                     the true face box of every frame (tests check the tracker)

Faces are redrawn until OpenCV's Haar cascade finds them in nearly every frame of
their clip (cartoon faces are not all faces to it), so the detector has something to
track. The set is seeded and byte-for-byte deterministic for one OpenCV and FFmpeg build.
``ffd data data=video`` (``python -m ffd.datasets``) makes it, or training makes it on first use.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ffd.data.faces import FaceDetector, make_detector
from ffd.data.facts import FACE_SIZE, PART_BOXES, SPLITS
from ffd.data.synthetic import draw_face, generate_once
from ffd.errors import ConfigError, FfdError
from ffd.progress import progress

log = logging.getLogger(__name__)

MARKER = "synthetic_video.json"
GENERATOR_VERSION = 2  # 2: faces the detector finds across their clip
REAL_DIR = Path("original_sequences/youtube/c23/videos")
FAKE_DIR = "manipulated_sequences/{method}/c23/videos"
FPS = 25
# method -> (parts pasted, or "face"; feather radius on the 600 px face; share of the colour difference
# matched). Feather and matching follow ffd.data.synthetic's difficulties.
METHODS: dict[str, tuple[Sequence[str] | str, float, float]] = {
    "Deepfakes": ("face", 12.0, 1.0),
    "FaceSwap": (("left_eye", "right_eye", "nose", "mouth"), 4.0, 0.5),
    "Face2Face": (("nose", "mouth"), 10.0, 1.0),
    "NeuralTextures": (("mouth",), 10.0, 1.0),
}
_FACE_OVAL = (165, 190, 435, 475)  # the inner face on the 600 px canvas
_TRUE_BOX = (93, 85, 512, 504)  # where the Haar cascade puts the face on that canvas (mean of 12 faces)
_EYES = [
    ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2 + 12) for b in (PART_BOXES["left_eye"], PART_BOXES["right_eye"])
]
_MAX_DRAWS = 50  # redraws of an identity until the detector finds it


@dataclass(frozen=True)
class Motion:
    """One clip's camera path and blinks (a fake replays its target's)."""

    amplitude: tuple[float, float]  # drift, as a share of the frame side
    period: tuple[float, float]  # frames
    phase: tuple[float, float]
    zoom: float
    tilt: float  # degrees
    blinks: tuple[int, ...]  # first frame of each blink (3 frames closed)
    seed: int  # the sensor noise


def _mask(method: str) -> np.ndarray:
    """The pasted region of a method on the 600 px canvas, feathered: float (600, 600, 1) in [0, 1]."""
    region, radius, _ = METHODS[method]
    mask = Image.new("L", (FACE_SIZE, FACE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in [_FACE_OVAL] if region == "face" else [PART_BOXES[p] for p in region]:
        inset = 2 * radius if region != "face" else 0
        draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=255)
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)[..., None] / 255


def _colour_matched(donor: np.ndarray, target: np.ndarray, mask: np.ndarray, share: float) -> np.ndarray:
    """The donor with the mean and spread of its pasted region moved ``share`` of the way to the target's."""
    inside = mask[..., 0] > 0.5
    t, s = target[inside], donor[inside]
    scale = 1 + share * (t.std(0) / (s.std(0) + 1e-3) - 1)
    return (donor - s.mean(0)) * scale + s.mean(0) + share * (t.mean(0) - s.mean(0))


def _blink(face: Image.Image, skin: tuple[int, int, int], scale: float) -> Image.Image:
    """The face with both eyes closed: skin-coloured lids and a dark lash line."""
    closed = face.copy()
    draw = ImageDraw.Draw(closed)
    for cx, cy in _EYES:
        x, y = cx * scale, cy * scale
        draw.ellipse((x - 42 * scale, y - 22 * scale, x + 42 * scale, y + 20 * scale), fill=skin)
        draw.line((x - 36 * scale, y + 4 * scale, x + 36 * scale, y + 4 * scale), fill=(40, 30, 25),
                  width=max(1, round(4 * scale)))  # fmt: skip
    return closed


def _frame_transform(motion: Motion, t: int, size: int) -> tuple[float, float, float, float]:
    """(dx, dy, zoom, angle) of frame t: a smooth drift and breathing zoom."""
    (ax, ay), (px, py), (fx, fy) = motion.amplitude, motion.period, motion.phase
    dx = ax * size * np.sin(2 * np.pi * t / px + fx)
    dy = ay * size * np.sin(2 * np.pi * t / py + fy)
    zoom = 1 + motion.zoom * np.sin(2 * np.pi * t / (px + py))
    angle = motion.tilt * np.sin(2 * np.pi * t / py + fx)
    return float(dx), float(dy), float(zoom), float(angle)


def _place(
    face: Image.Image, transform: tuple[float, float, float, float], fill: tuple[int, ...]
) -> Image.Image:
    """The frame: the face image moved, zoomed and tilted about its centre (PIL maps output to input)."""
    dx, dy, zoom, angle = transform
    size = face.width
    c, s = np.cos(np.radians(angle)) / zoom, np.sin(np.radians(angle)) / zoom
    cx = cy = size / 2
    # input = R/zoom * (output - centre - shift) + centre
    a, b, d, e = c, s, -s, c
    tx, ty = cx + dx, cy + dy
    coeffs = (a, b, cx - a * tx - b * ty, d, e, cy - d * tx - e * ty)
    return face.transform(
        face.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
    )


def _true_box(transform: tuple[float, float, float, float], size: int) -> list[float]:
    """Where the face's box lands in a frame (its centre moves with the shift, its side with the zoom)."""
    dx, dy, zoom, _ = transform
    scale = size / FACE_SIZE
    x0, y0, x1, y1 = (v * scale for v in _TRUE_BOX)
    cx, cy = (
        size / 2 + dx + ((x0 + x1) / 2 - size / 2) * zoom,
        size / 2 + dy + ((y0 + y1) / 2 - size / 2) * zoom,
    )
    hw, hh = (x1 - x0) / 2 * zoom, (y1 - y0) / 2 * zoom
    return [round(cx - hw, 2), round(cy - hh, 2), round(cx + hw, 2), round(cy + hh, 2)]


def _motion(rng: np.random.Generator, frames: int) -> Motion:
    u = rng.uniform
    blinks, t = [], int(rng.integers(0, 12))
    while t < frames:
        blinks.append(t)
        t += int(rng.integers(18, 40))
    return Motion(
        amplitude=(u(0.03, 0.08), u(0.02, 0.05)), period=(u(30, 70), u(25, 60)),
        phase=(u(0, 2 * np.pi), u(0, 2 * np.pi)), zoom=u(0.02, 0.06), tilt=u(1, 4),
        blinks=tuple(blinks), seed=int(rng.integers(2**31)),
    )  # fmt: skip


def _identity(
    seed: int, index: int, motion: Motion, frames: int, size: int, detector: FaceDetector
) -> Image.Image:
    """The 600 px face of an identity: the first draw the detector finds in nearly every frame of its
    clip (8 spread over it; one miss allowed, e.g. a blink)."""
    checked = np.linspace(0, frames - 1, min(8, frames)).round().astype(int)
    for attempt in range(_MAX_DRAWS):
        face = draw_face(np.random.default_rng([seed, 3, index, attempt]))
        clip, _ = render_clip(face, motion, int(checked[-1]) + 1, size)
        misses = sum(not detector.detect(Image.fromarray(clip[t])) for t in checked)
        if misses <= (1 if len(checked) > 4 else 0):
            return face
    raise FfdError(
        f"The {detector.name} face detector missed the face in {_MAX_DRAWS} drawn clips at {size} px: "
        "make the clips larger (size=160 or more)."
    )


def _write(path: Path, frames: Sequence[np.ndarray]) -> None:
    """H.264 (CRF 23, one thread so the bytes are deterministic) in an MP4 container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def render_clip(
    target: Image.Image,
    motion: Motion,
    frames: int,
    size: int,
    swap: tuple[Image.Image, str] | None = None,
    flicker_seed: int = 0,
) -> tuple[list[np.ndarray], list[list[float]]]:
    """The frames (uint8 RGB) of a clip and the true face box of each.

    Args:
        target: The 600 px face in the clip.
        motion: Its camera path and blinks.
        frames: Clip length.
        size: Frame side in pixels.
        swap: The face pasted in and how much of it (a key of METHODS): a fake; None: a real clip.
        flicker_seed: Seed of the paste's frame-to-frame misalignment and colour flicker.
    """
    scale = size / FACE_SIZE
    base = np.asarray(target.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    r, g, b = np.median(np.asarray(target)[330:370, 195:235].reshape(-1, 3), axis=0)
    skin = (int(r), int(g), int(b))  # a cheek
    fill = tuple(int(v) for v in base[2, 2])
    if swap is not None:
        donor, method = swap
        mask600 = _mask(method)
        paste600 = _colour_matched(np.asarray(donor, np.float32), np.asarray(target, np.float32), mask600,
                                   METHODS[method][2])  # fmt: skip
        paste = Image.fromarray(np.clip(paste600, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.LANCZOS
        )
        mask = np.asarray(Image.fromarray((mask600[..., 0] * 255).astype(np.uint8)).resize((size, size)),
                          dtype=np.float32)[..., None] / 255  # fmt: skip
        flicker = np.random.default_rng([flicker_seed, 4])
    noise = np.random.default_rng([motion.seed, 5])
    out, boxes = [], []
    for t in range(frames):
        face = base
        if swap is not None:
            # A per-frame swap: the paste lands a little off (about 1-2 px at 600) and its colour wavers.
            shift = flicker.normal(0, 0.8 * max(1.0, size / 128), 2)
            moved = paste.transform(paste.size, Image.Transform.AFFINE, (1, 0, shift[0], 0, 1, shift[1]),
                                    Image.Resampling.BILINEAR)  # fmt: skip
            gain = 1 + flicker.normal(0, 0.025, 3)
            face = (base * (1 - mask) + np.asarray(moved, np.float32) * gain * mask).astype(np.float32)
        img = Image.fromarray(np.clip(face, 0, 255).astype(np.uint8))
        if any(b <= t < b + 3 for b in motion.blinks):
            img = _blink(img, skin, scale)
        transform = _frame_transform(motion, t, size)
        frame = np.asarray(_place(img, transform, fill), np.float32)
        frame += noise.standard_normal(frame.shape, dtype=np.float32) * 3
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
        boxes.append(_true_box(transform, size))
    return out, boxes


def pair_splits(identities: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    """FF++-style split lists: each split a list of ``[target, source]`` id pairs (both people together)."""
    pairs = [[f"{i:03d}", f"{i + 1:03d}"] for i in range(0, identities, 2)]
    order = np.random.default_rng([seed, 6]).permutation(len(pairs))
    n_test, n_val = round(len(pairs) * test_fraction), round(len(pairs) * val_fraction)
    rank = np.argsort(order)  # each pair's place in the shuffled order
    split_of = ["test" if r < n_test else "val" if r < n_test + n_val else "train" for r in rank]
    return {s: [p for p, s2 in zip(pairs, split_of, strict=True) if s2 == s] for s in SPLITS}


def generate(
    out: str | Path,
    identities: int,
    methods: Sequence[str],
    frames: int,
    size: int,
    seed: int,
    splits: bool,
) -> Path:
    """Write a synthetic FF++-style set under ``out`` (see the module doc) and return ``out``.

    Args:
        identities: People (an even number: they come in pairs); one real clip each.
        methods: Manipulation methods (keys of METHODS); each makes one fake per ordered pair.
        frames: Frames per clip (at 25 frames/s).
        size: Frame side in pixels.
        seed: Everything random derives from it.
        splits: Also write FF++'s ``splits/{train,val,test}.json`` (pairs: 70/15/15 %).
    """
    out = Path(out)
    if identities < 2 or identities % 2:
        raise ConfigError(
            f"data.synthetic.identities={identities}: give an even number >= 2 (they come in pairs)."
        )
    if unknown := [m for m in methods if m not in METHODS]:
        raise ConfigError(f"data.synthetic.methods: {unknown} unknown; choose from {', '.join(METHODS)}.")
    if frames < 1 or size < 32:
        raise ConfigError(f"data.synthetic: frames={frames} must be >= 1 and size={size} >= 32.")
    for folder in ("original_sequences", "manipulated_sequences", "splits"):
        shutil.rmtree(out / folder, ignore_errors=True)
    detector = make_detector("haar")
    motions = [_motion(np.random.default_rng([seed, 7, i]), frames) for i in range(identities)]
    faces = [_identity(seed, i, motions[i], frames, size, detector) for i in range(identities)]
    boxes: dict[str, list[list[float]]] = {}
    jobs: list[tuple[int, int | None, str]] = [(i, None, "") for i in range(identities)]
    jobs += [(i, i ^ 1, m) for m in methods for i in range(identities)]  # i ^ 1: i's partner
    for k, (target, source, method) in enumerate(progress(jobs, "Generating synthetic videos", unit="video")):
        name = f"{target:03d}.mp4" if source is None else f"{target:03d}_{source:03d}.mp4"
        rel = REAL_DIR / name if source is None else Path(FAKE_DIR.format(method=method)) / name
        swap = None if source is None else (faces[source], method)
        flicker = seed * 100003 + k
        clip, boxes[str(rel)] = render_clip(faces[target], motions[target], frames, size, swap, flicker)
        _write(out / rel, clip)
    if splits:
        (out / "splits").mkdir()
        for split, pairs in pair_splits(identities, 0.15, 0.15, seed).items():
            (out / "splits" / f"{split}.json").write_text(json.dumps(pairs))
    (out / "boxes.json").write_text(json.dumps(boxes))
    return out


def ensure_synthetic_video(out: str | Path, **spec) -> Path:
    """Generate the set under ``out`` (``generate``'s keyword arguments) unless an identical complete one
    is there already.

    Refuses to write into a non-empty folder that ffd did not generate, so a user's own
    data is never overwritten.
    """
    out = Path(out)
    spec = {**spec, "methods": list(spec.get("methods", [])), "version": GENERATOR_VERSION}
    args = {k: v for k, v in spec.items() if k != "version"}
    log_line = (f"Generating {spec['identities']} identities x (1 real + {len(spec['methods'])} fakes) "
                f"synthetic videos in {out} ...")  # fmt: skip
    own = "To train on your own videos there, use data=video data.synthetic=null data.root=..."
    generate_once(out, MARKER, spec, lambda: generate(out, **args), "video generator",
                  "For your own videos use data.synthetic=null.", own, log_line)  # fmt: skip
    return out
