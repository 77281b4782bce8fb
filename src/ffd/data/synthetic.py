"""A synthetic CIPLAB-like data set: procedurally drawn faces and part-swapped fakes.

Real images are faces drawn from random identity parameters (skin, hair,
eyes, brows, nose, mouth, background, lighting, pose). A fake is a drawn face
whose eyes, nose and/or mouth were replaced by the same region of another
face, as CIPLAB's experts did in Photoshop. Difficulty sets how well the
paste is hidden: ``easy`` pastes a hard-edged box, ``mid`` a feathered one
with half the skin tone matched, ``hard`` a soft ellipse colour-matched to
the face. Real and fake identities come from the same distribution and get
the same lighting, pose, noise and JPEG settings, so no global cue (colour,
brightness, file size) tells them apart: only the edit does.

Files follow CIPLAB's layout and names::

    <out>/real_and_fake_face/training_real/real_00001.jpg
    <out>/real_and_fake_face/training_fake/{easy|mid|hard}_{id}_{LRNM}.jpg

``ffd data`` (``python -m ffd.datasets``) makes the set ``data=synthetic`` names, or training makes it
on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ffd.data.facts import (
    CIPLAB_FOLDERS,
    CIPLAB_TREE,
    DIFFICULTIES,
    FACE_SIZE,
    PART_BOXES,
    fake_name,
    real_name,
    replaced_parts,
)
from ffd.errors import ConfigError, FfdError
from ffd.progress import progress

# OpenCV (cv2) is imported inside the functions that use it, as in ffd.data.faces: importing it
# would cost every command that loads the data modules ~0.1 s, and most never draw a face.

log = logging.getLogger(__name__)

SIZE = FACE_SIZE  # the generator draws CIPLAB's aligned 600x600 face, parts in PART_BOXES
TREE = CIPLAB_TREE
MARKER = "synthetic.json"
# Bump when the drawing changes, so sets made by an older generator are remade, not reused.
GENERATOR_VERSION = 2  # 2: box-local blending, OpenCV photographing, table-drawn noise
_PARTIAL = ".ffd-synthetic-incomplete"

# Feather radius (px) and share of the skin-tone difference removed, per difficulty.
_BLEND = {"easy": (0.0, 0.0), "mid": (4.0, 0.5), "hard": (10.0, 1.0)}
_DIFFICULTY_SHARE = {"easy": 0.25, "mid": 0.5, "hard": 0.25}  # CIPLAB's rough proportions
# Manipulation methods: ``mixed`` is CIPLAB-like (the method follows the difficulty); the others make
# every fake one way (cross-method protocols: train on one, test on the others), named by a difficulty.
METHODS = {
    "mixed": "",
    "box": "easy",
    "feathered": "mid",
    "ellipse": "hard",
    "poisson": "hard",
    "face": "hard",
}
_FACE_OVAL = (165, 190, 435, 475)  # the whole-face replacement's ellipse, inside the drawn head

_SKIN_LIGHT, _SKIN_DARK = np.array([236, 200, 172]), np.array([92, 58, 38])
_HAIR = [(20, 16, 14), (58, 38, 24), (110, 74, 42), (196, 160, 100), (150, 60, 30), (150, 150, 150)]
_IRIS = [(70, 44, 24), (110, 72, 40), (60, 100, 150), (70, 110, 70), (110, 115, 120)]


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(values, 0, 255).astype(int)
    return int(r), int(g), int(b)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def draw_face(rng: np.random.Generator) -> Image.Image:
    """Draw one canonical (frontal, centred) face with random identity parameters."""
    u = rng.uniform
    # Background: a smooth random field, drawn small and upscaled (cheap and blotchy).
    small = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)

    skin = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * u(0, 1) + rng.normal(0, 6, 3)
    hair = np.array(_HAIR[rng.integers(len(_HAIR))]) + rng.normal(0, 8, 3)
    cx, cy = SIZE / 2 + u(-8, 8), 310 + u(-6, 6)
    rx, ry = u(165, 195), u(215, 245)

    # Clothes, neck, hair behind the head, ears, face.
    _ellipse(draw, cx, SIZE + 60, u(230, 300), 170, _rgb(rng.integers(0, 256, 3)))
    draw.rectangle((cx - 0.45 * rx, cy + 0.6 * ry, cx + 0.45 * rx, SIZE), fill=_rgb(skin * 0.85))
    style = rng.integers(3)  # 0 short, 1 long, 2 very short
    if style != 2:
        _ellipse(draw, cx, cy - 0.15 * ry, rx * 1.12, ry * (1.05 if style == 0 else 1.25), _rgb(hair))
    for side in (-1, 1):
        _ellipse(draw, cx + side * rx * 0.98, cy - 0.02 * ry, 22, 38, _rgb(skin * 0.93))
    for k in range(6):  # darker rim, lighter centre: a hint of 3D shading
        shade = 0.88 + 0.025 * k
        _ellipse(draw, cx, cy, rx * (1 - 0.06 * k), ry * (1 - 0.05 * k), _rgb(skin * shade))
    if style != 2:  # fringe, kept above the brows
        top = cy - ry
        draw.chord((cx - rx, top - 20, cx + rx, top + 0.55 * ry), 180, 360, fill=_rgb(hair))

    # Brows and eyes.
    eye_y = cy - 0.18 * ry + u(-5, 5)
    eye_dx, eye_w, eye_h = 0.38 * rx + u(-4, 4), u(28, 36), u(11, 16)
    iris = np.array(_IRIS[rng.integers(len(_IRIS))]) + rng.normal(0, 6, 3)
    brow_dy, brow_w, tilt = u(26, 36), int(u(5, 11)), u(-6, 6)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        by = eye_y - brow_dy
        draw.line(
            (ex - 1.1 * eye_w, by + side * tilt, ex + 1.1 * eye_w, by - side * tilt),
            fill=_rgb(hair * 0.8),
            width=brow_w,
        )
        _ellipse(draw, ex, eye_y, eye_w, eye_h, _rgb(np.array([240, 236, 230]) - u(0, 20)))
        ir = eye_h * u(0.8, 0.95)
        _ellipse(draw, ex, eye_y, ir, ir, _rgb(iris))
        _ellipse(draw, ex, eye_y, ir * 0.45, ir * 0.45, (12, 10, 10))
        _ellipse(draw, ex + ir * 0.3, eye_y - ir * 0.3, 2.5, 2.5, (250, 250, 250))
        draw.arc(
            (ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h), 190, 350, fill=_rgb(skin * 0.4), width=3
        )

    # Nose: bridge shadows, tip, nostrils.
    ny, nw, nl = cy + 0.1 * ry + u(-4, 4), u(14, 22), u(45, 60)
    dark = _rgb(skin * 0.75)
    for side in (-1, 1):
        draw.line((cx + side * nw * 0.5, ny - nl * 0.8, cx + side * nw, ny + nl * 0.35), fill=dark, width=3)
        _ellipse(draw, cx + side * nw * 0.55, ny + nl * 0.45, nw * 0.35, nw * 0.18, _rgb(skin * 0.35))
    _ellipse(draw, cx, ny + nl * 0.25, nw * 0.7, nw * 0.5, _rgb(skin * 1.06))

    # Mouth: lips and the line between them.
    my, mw, mh = cy + 0.45 * ry + u(-4, 4), u(40, 60), u(10, 17)
    lips = skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 8, 3)
    _ellipse(draw, cx, my - mh * 0.35, mw, mh * 0.7, _rgb(lips * 0.92))
    _ellipse(draw, cx, my + mh * 0.4, mw * 0.85, mh * 0.8, _rgb(lips))
    smile = u(-6, 8)
    draw.line(
        (cx - mw, my, cx, my + smile * 0.4, cx + mw, my), fill=_rgb(lips * 0.45), width=3, joint="curve"
    )
    return img


# The blend masks depend on the part and the difficulty only: each is drawn once per process and
# covers just the part's box, so a swap touches a few thousand pixels, not the whole canvas. They
# are stored with 3 equal channels, as the images' (h, w, 3): numpy is slow to broadcast a size-1 axis.
@functools.cache
def _part_mask(part: str, difficulty: str) -> np.ndarray:
    """Blend weights (h, w, 3) in [0, 1] over the part's box: 1 where the donor shows, 0 where the target."""
    x0, y0, x1, y1 = PART_BOXES[part]
    w, h = x1 - x0, y1 - y0
    radius, _ = _BLEND[difficulty]
    if difficulty == "easy":  # a hard-edged box
        return _read_only(np.ones((h, w, 3), np.float32))
    # A soft ellipse, inset so the blur's tail beyond 2 sigma (< 2 %) is all the box edge clips away.
    # It is drawn on the box grown by the blur's reach, so the box's values match a whole-canvas mask.
    pad, inset = int(4 * radius), 2 * radius
    mask = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    ImageDraw.Draw(mask).ellipse((pad + inset, pad + inset, pad + w - inset, pad + h - inset), fill=255)
    weights = np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255
    return _read_only(np.repeat(weights[pad : pad + h, pad : pad + w, None], 3, axis=2))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # a cached mask is shared by every later call
    return array


def _colour_match(source: np.ndarray, target: np.ndarray, match: float) -> np.ndarray:
    """The per-channel affine map (3x4, for ``cv2.transform``) that moves the colour mean and spread of
    ``source`` ``match`` of the way to ``target``'s: ``match=1`` copies target's statistics."""
    import cv2

    # OpenCV's per-channel statistics: numpy's reductions over (h, w, 3) pixels are ten times slower.
    (s_mean, s_std), (t_mean, t_std) = cv2.meanStdDev(source), cv2.meanStdDev(target)
    gain = 1 + match * (t_std / (s_std + 1e-3) - 1)
    offset = s_mean + match * (t_mean - s_mean) - gain * s_mean
    return np.hstack([np.diagflat(gain), offset]).astype(np.float32)


def _blend_into(out: np.ndarray, patch: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray) -> None:
    """Blend ``patch`` (float32) into ``out`` (uint8, in place) over ``box`` with weights ``mask``."""
    x0, y0, x1, y1 = box
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(np.rint(region + (patch - region) * mask), 0, 255).astype(np.uint8)


def swap_parts(target: Image.Image, donor: Image.Image, bits: str, difficulty: str) -> Image.Image:
    """Replace the parts marked in ``bits`` (LRNM) of target by the donor's, blended by difficulty."""
    import cv2

    out, src = np.array(target), np.asarray(donor)
    _, match = _BLEND[difficulty]
    for part in replaced_parts(bits):  # the boxes do not overlap: the order does not matter
        x0, y0, x1, y1 = box = PART_BOXES[part]
        patch: np.ndarray = src[y0:y1, x0:x1].astype(np.float32)
        if match:
            patch = cv2.transform(patch, _colour_match(patch, out[y0:y1, x0:x1], match))
        _blend_into(out, patch, box, _part_mask(part, difficulty))
    return Image.fromarray(out)


def poisson_parts(target: Image.Image, donor: Image.Image, bits: str) -> Image.Image:
    """Replace the parts by the donor's with Poisson blending (OpenCV's seamlessClone): the pasted
    gradients are kept, the colours follow the target's at the seam."""
    import cv2

    out = np.asarray(target).copy()
    src = np.ascontiguousarray(np.asarray(donor))
    for part in replaced_parts(bits):
        x0, y0, x1, y1 = PART_BOXES[part]
        mask = np.zeros(out.shape[:2], np.uint8)
        mask[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = 255
        out = cv2.seamlessClone(src, out, mask, ((x0 + x1) // 2, (y0 + y1) // 2), cv2.NORMAL_CLONE)
    return Image.fromarray(out)


@functools.cache
def _face_mask() -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The whole-face replacement's feathered oval: the box its blur reaches, and its weights there."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).ellipse(_FACE_OVAL, fill=255)
    weights = np.asarray(mask.filter(ImageFilter.GaussianBlur(12)), dtype=np.float32) / 255
    ys, xs = np.nonzero(weights)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return (x0, y0, x1, y1), _read_only(np.repeat(weights[y0:y1, x0:x1, None], 3, axis=2))


def replace_face(target: Image.Image, donor: Image.Image) -> Image.Image:
    """Whole-face replacement: the donor's inner face in a feathered oval, colour-matched to the target."""
    import cv2

    out, src = np.array(target), np.asarray(donor)
    ox0, oy0, ox1, oy1 = _FACE_OVAL  # the colour statistics come from the oval's box
    colour = _colour_match(src[oy0:oy1, ox0:ox1], out[oy0:oy1, ox0:ox1], 1.0)
    box, mask = _face_mask()  # the blend covers all the feather reaches, a little past the oval
    x0, y0, x1, y1 = box
    _blend_into(out, cv2.transform(src[y0:y1, x0:x1].astype(np.float32), colour), box, mask)
    return Image.fromarray(out)


def manipulate(
    target: Image.Image, donor: Image.Image, bits: str, difficulty: str, method: str
) -> Image.Image:
    """A fake made by ``method`` (see METHODS); ``mixed`` blends by difficulty."""
    if method == "poisson":
        return poisson_parts(target, donor, bits)
    if method == "face":
        return replace_face(target, donor)
    return swap_parts(target, donor, bits, METHODS[method] or difficulty)


# Pixel coordinates across the canvas, centred on 0 (from -0.5 to 0.5): the lighting gradient's ramp.
_RAMP = np.arange(SIZE, dtype=np.float32) / SIZE - 0.5
# The 256 quantiles of the standard normal: sensor noise picks one per value with a random byte,
# ten times cheaper than drawing normals and, at the few grey levels of noise, just as Gaussian.
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


def _light(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A directional light gradient (up to +-35 % across the image) times a slight colour cast."""
    import cv2

    angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.35)
    # Python floats, not numpy's float64 scalars, keep the planes float32 (numpy would widen them).
    light = np.add.outer(2 * strength * math.sin(angle) * _RAMP, 1 + 2 * strength * math.cos(angle) * _RAMP)
    cast = 1 + rng.normal(0, 0.03, 3)
    gains = cv2.merge([light * float(c) for c in cast])  # one plane a channel: numpy's (h, w, 3) is slow
    return cv2.multiply(arr, gains, dtype=cv2.CV_8U)  # rounds and saturates to uint8


def _pose(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small rotation (+-6 degrees) and shift (+-12 px); the uncovered corners take the corner colour."""
    import cv2

    matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), rng.uniform(-6, 6), 1.0)
    matrix[:, 2] += rng.integers(-12, 13, 2)
    fill = tuple(int(v) for v in arr[5, 5])
    # Bilinear, not bicubic: seven times cheaper, and the blur that follows hides the difference.
    return cv2.warpAffine(arr, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=fill)


def _sensor_noise(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (sigma 2 to 6 grey levels) to every value, saturating to uint8."""
    import cv2

    levels = np.rint(_NORMAL_QUANTILES * rng.uniform(2, 6)).astype(np.int16)
    noise = cv2.LUT(rng.integers(0, 256, arr.shape, dtype=np.uint8), levels)
    return cv2.add(arr, noise, dtype=cv2.CV_8U)


def photograph(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Apply what a camera and a pipeline would: lighting, pose, softness, sensor noise."""
    import cv2

    arr = _pose(_light(np.asarray(img), rng), rng)
    arr = cv2.GaussianBlur(arr, (0, 0), rng.uniform(0.3, 1.0))
    return Image.fromarray(_sensor_noise(arr, rng))


Task = tuple[str, int, str, str, int, str]  # path, seed, real|fake, difficulty_bits, index, method


def _render(task: Task) -> None:
    """Render and save one file; each file has its own seed, so workers need no coordination."""
    path, seed, kind, difficulty_bits, index, method = task
    rng = np.random.default_rng([seed, 0 if kind == "real" else 1, index])
    face = draw_face(rng)
    if kind == "fake":
        difficulty, bits = difficulty_bits.split("_")
        face = manipulate(face, draw_face(rng), bits, difficulty, method)
    photograph(face, rng).save(path, "JPEG", quality=int(rng.integers(85, 96)))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _keep_freed_memory() -> None:
    """Let a pool worker's C allocator keep the memory it frees, for the next image to reuse.

    Each image allocates ~20 MB of arrays of a few MB each; glibc maps blocks that large afresh and
    unmaps them on free, so every image paid ~2,000 page faults (a quarter of its time). Only our
    own forked workers are tuned; elsewhere (another C library) this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)  # blocks up to 64 MB come from the heap...
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)  # ...which keeps up to 256 MB free before shrinking
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _opencv_threads_stopped() -> Iterator[None]:
    """Stop OpenCV's worker threads while a forked pool runs, then let it start them again.

    A forked child inherits OpenCV's thread pool without its threads: using or resizing it there
    can hang (waiting on threads that do not exist). With the parent's pool emptied first, each
    child starts with none and runs OpenCV on its own thread, which is what a pool of one process
    a core wants anyway.
    """
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # joins the worker threads, in the parent where they exist
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _plan(out: Path, num_real: int, num_fake: int, seed: int, method: str) -> list[Task]:
    real_dir, fake_dir = (out / TREE / folder for folder in CIPLAB_FOLDERS)
    tasks = [(str(real_dir / real_name(i)), seed, "real", "", i, method) for i in range(1, num_real + 1)]
    rng = np.random.default_rng([seed, 2])
    counts = {d: round(num_fake * _DIFFICULTY_SHARE[d]) for d in DIFFICULTIES[:-1]}
    counts["hard"] = num_fake - sum(counts.values())
    difficulties = rng.permutation([d for d in DIFFICULTIES for _ in range(counts[d])])
    ids = dict.fromkeys(DIFFICULTIES, 0)
    for j, drawn in enumerate(difficulties, start=1):
        difficulty = METHODS[method] or drawn
        ids[difficulty] += 1
        bits = "1111" if method == "face" else format(int(rng.integers(1, 16)), "04b")
        name = fake_name(difficulty, ids[difficulty], bits)
        tasks.append((str(fake_dir / name), seed, "fake", f"{difficulty}_{bits}", j, method))
    return tasks


def generate(
    out: str | Path,
    num_real: int,
    num_fake: int,
    seed: int,
    method: str,
    workers: int | None = None,
) -> Path:
    """Write a synthetic CIPLAB-like set under ``out`` and return the CIPLAB tree's path.

    Deterministic: the same arguments give byte-identical files. Real images depend on
    the seed only, so sets that differ in ``method`` share their reals.
    """
    out = Path(out)
    if num_real < 1 or num_fake < 1:
        raise ConfigError(
            f"Need at least one real and one fake image (got {num_real} real, {num_fake} fake)."
        )
    if method not in METHODS:
        raise ConfigError(f"data.synthetic.method={method!r}: choose one of {', '.join(METHODS)}.")
    for d in CIPLAB_FOLDERS:
        shutil.rmtree(out / TREE / d, ignore_errors=True)
        (out / TREE / d).mkdir(parents=True)
    tasks = _plan(out, num_real, num_fake, seed, method)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = progress(None, "Generating synthetic faces", total=len(tasks), unit="img")
    with bar:
        if workers > 1:
            fork = multiprocessing.get_context("fork")
            with _opencv_threads_stopped(), fork.Pool(workers, initializer=_keep_freed_memory) as pool:
                for _ in pool.imap_unordered(_render, tasks, chunksize=8):
                    bar.update()
        else:
            for task in tasks:
                _render(task)
                bar.update()
    return out / TREE


def generate_once(
    out: Path,
    marker_name: str,
    spec: dict[str, Any],
    make: Callable[[], object],
    generator: str,
    file_hint: str,
    own_hint: str,
    log_line: str,
) -> None:
    """Run ``make()`` to fill ``out`` unless a complete set made with the same ``spec`` is there.

    A marker file with the spec is written last; a folder marked as partial is one a killed
    generation left, and is regenerated. A non-empty folder that ffd did not generate is
    refused, so a user's own data is never overwritten.
    """
    marker = out / marker_name
    if out.exists() and not out.is_dir():
        raise FfdError(f"{out} is a file; synthetic data needs a folder. {file_hint}")
    if marker.exists():
        if json.loads(marker.read_text()) == spec:
            return
        log.info("Synthetic set at %s was made with other settings; regenerating it.", out)
    elif out.exists() and any(out.iterdir()) and not (out / _PARTIAL).exists():
        raise FfdError(
            f"{out} is not empty and was not made by ffd's {generator}; refusing to write into it. "
            f"{own_hint}; for synthetic data, point data.root at an empty or new folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    (out / _PARTIAL).touch()
    log.info("%s", log_line)
    make()
    marker.write_text(json.dumps(spec))
    (out / _PARTIAL).unlink()


def ensure_synthetic(out: str | Path, num_real: int, num_fake: int, seed: int, method: str) -> Path:
    """Generate the set under ``out`` unless an identical complete one is there already.

    Refuses to write into a non-empty folder that ffd did not generate, so a
    user's own data is never overwritten.
    """
    out = Path(out)
    spec: dict[str, Any] = {
        "num_real": num_real,
        "num_fake": num_fake,
        "seed": seed,
        "version": GENERATOR_VERSION,
    }
    if method != "mixed":  # a mixed set's marker stays as before
        spec["method"] = method
    log_line = f"Generating {num_real} real + {num_fake} fake synthetic images in {out} ..."
    own = "To train on your own images there, use data=ciplab data.root=..."
    generate_once(out, MARKER, spec, lambda: generate(out, num_real, num_fake, seed, method),
                  "generator", "For your own data use data=ciplab.", own, log_line)  # fmt: skip
    return out / TREE
