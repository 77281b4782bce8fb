"""Compare ffd's face detectors on generated scenes with known face boxes; print a markdown table.

    .venv/bin/python bench/face_detectors.py --n 60 [--detectors haar mtcnn] [--threads 1]

Scenes: a synthetic face (``ffd.data.synthetic.draw_face`` through ``photograph``) pasted at a
random position and scale into a larger cluttered background; as many face-free backgrounds
(plus skimage's face-free photos) count false positives; skimage's astronaut is one real photo.
The true box of a synthetic face is its skin ellipse at the generator's mean size, moved and
scaled with the paste; the astronaut's is labelled by hand (forehead to chin, cheek to cheek).
A face counts as found when the largest detected face overlaps the true box with IoU >= 0.3.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ffd.data.faces import DETECTORS, FaceDetector, iou, make_detector
from ffd.data.facts import Box
from ffd.data.synthetic import SIZE, draw_face, photograph

# draw_face's skin ellipse at its mean centre (300, 310) and radii (180, 230), in its 600x600 frame.
FACE_BOX: Box = (120.0, 80.0, 480.0, 540.0)
ASTRONAUT_BOX: Box = (180.0, 70.0, 275.0, 172.0)  # labelled by hand on skimage.data.astronaut()
FOUND_IOU = 0.3
CANVASES = [(640, 480), (800, 600), (480, 640), (1024, 768)]


@dataclass
class Scene:
    name: str
    img: Image.Image
    box: Box | None  # None: no face in the image


def background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random field with a few random shapes on it, and sensor noise."""
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        w, h = rng.uniform(20, size[0] / 3), rng.uniform(20, size[1] / 3)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=fill)
    arr = np.asarray(img, dtype=np.float32) + rng.standard_normal((size[1], size[0], 3)) * 4
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def face_scene(rng: np.random.Generator) -> tuple[Image.Image, Box]:
    """A photographed synthetic face pasted into a background, and its true face box."""
    canvas = CANVASES[rng.integers(len(CANVASES))]
    img = background(rng, canvas)
    side = round(rng.uniform(0.35, 0.95) * min(canvas))  # the face box is 0.6-0.77 of this
    face = photograph(draw_face(rng), rng).resize((side, side), Image.Resampling.BILINEAR)
    x, y = int(rng.integers(0, canvas[0] - side + 1)), int(rng.integers(0, canvas[1] - side + 1))
    img.paste(face, (x, y))
    k = side / SIZE
    left, top, right, bottom = FACE_BOX
    return img, (x + left * k, y + top * k, x + right * k, y + bottom * k)


def scenes(n: int, seed: int) -> Iterator[Scene]:
    """``n`` synthetic-face scenes, ``n`` face-free ones, then skimage's photos where installed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, box = face_scene(rng)
        yield Scene(f"synthetic_{i}", img, box)
    for i in range(n):
        yield Scene(f"empty_{i}", background(rng, CANVASES[rng.integers(len(CANVASES))]), None)
    try:
        from skimage import data
    except ImportError:
        return
    yield Scene("astronaut", Image.fromarray(data.astronaut()), ASTRONAUT_BOX)
    for name in ("coffee", "chelsea", "rocket", "immunohistochemistry"):  # no human face in these
        yield Scene(name, Image.fromarray(getattr(data, name)()).convert("RGB"), None)


@dataclass
class Tally:
    faces: int = 0
    found: int = 0
    ious: list[float] | None = None
    empty: int = 0
    false_positives: int = 0  # face-free images with any detection
    seconds: float = 0.0
    images: int = 0
    astronaut_iou: float | None = None


def measure(detector: FaceDetector, all_scenes: list[Scene]) -> Tally:
    """Run ``detector`` on every scene; the largest face is the one scored against the true box."""
    tally = Tally(ious=[])
    detector.detect(all_scenes[0].img)  # warm-up: lazy initialisation is not per-image time
    for scene in all_scenes:
        start = time.perf_counter()
        faces = detector.detect(scene.img)
        tally.seconds += time.perf_counter() - start
        tally.images += 1
        if scene.box is None:
            tally.empty += 1
            tally.false_positives += bool(faces)
            continue
        overlap = iou(faces[0].box, scene.box) if faces else 0.0
        if scene.name == "astronaut":
            tally.astronaut_iou = overlap
            continue
        tally.faces += 1
        if overlap >= FOUND_IOU:
            tally.found += 1
            tally.ious.append(overlap)  # type: ignore[union-attr]
    return tally


def table(results: dict[str, Tally]) -> str:
    """The markdown table of ``measure``'s results, one row per detector."""
    lines = [
        "| detector | synthetic faces found | mean IoU (found) | astronaut IoU | false positives "
        "| ms / image |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in results.items():
        mean = f"{np.mean(t.ious):.2f}" if t.ious else "-"
        astro = "-" if t.astronaut_iou is None else f"{t.astronaut_iou:.2f}"
        lines.append(
            f"| {name} | {t.found}/{t.faces} ({t.found / max(1, t.faces):.0%}) | {mean} | {astro} "
            f"| {t.false_positives}/{t.empty} | {1000 * t.seconds / max(1, t.images):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="synthetic-face scenes, and as many face-free ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (timing)")
    names = [d for d in DETECTORS if d != "auto"]
    parser.add_argument("--detectors", nargs="+", default=names, choices=names)
    args = parser.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    all_scenes = list(scenes(args.n, args.seed))
    results = {}
    for name in args.detectors:
        results[name] = measure(make_detector(name), all_scenes)
    print(table(results))
    print(
        f"\n{args.n} synthetic-face and {args.n} face-free scenes (seed {args.seed}) plus skimage's photos; "
        f"found = IoU >= {FOUND_IOU}; {args.threads} thread(s)."
    )


if __name__ == "__main__":
    main()
