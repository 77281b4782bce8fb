from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import split_settings
from PIL import Image, ImageDraw, ImageFilter

from ffd.data.facts import PART_BOXES, PARTS
from ffd.data.manifest import build_manifest
from ffd.data.synthetic import TREE, draw_face, ensure_synthetic, generate, swap_parts
from ffd.errors import FfdError


def test_layout_names_and_format(tiny_synthetic: Path) -> None:
    real = sorted((tiny_synthetic / TREE / "training_real").iterdir())
    fake = sorted((tiny_synthetic / TREE / "training_fake").iterdir())
    assert [p.name for p in real[:2]] == ["real_00001.jpg", "real_00002.jpg"] and len(real) == 16
    assert len(fake) == 16
    with Image.open(fake[0]) as img:
        assert img.format == "JPEG" and img.size == (600, 600) and img.mode == "RGB"
    records = build_manifest(tiny_synthetic, **split_settings())
    fakes = [r for r in records if r.label == 1]
    assert all(
        r.difficulty in ("easy", "mid", "hard") and len(r.parts) == 4 and "1" in r.parts for r in fakes
    )
    assert {r.difficulty for r in fakes} == {"easy", "mid", "hard"}
    assert all(r.ok for r in records)


def test_deterministic_across_worker_counts(tmp_path: Path) -> None:
    # workers=1 first: OpenCV's threads then exist in this process when the pool forks (a child
    # that touched the thread pool it inherited without its threads hung).
    a = generate(tmp_path / "a", 3, 3, seed=5, method="mixed", workers=1)
    b = generate(tmp_path / "b", 3, 3, seed=5, method="mixed", workers=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    c = generate(tmp_path / "c", 3, 3, seed=6, method="mixed", workers=1)
    first_real = Path("training_real", "real_00001.jpg")
    assert (a / first_real).read_bytes() != (c / first_real).read_bytes()


@pytest.mark.parametrize("difficulty", ["easy", "mid", "hard"])
def test_swap_changes_only_the_chosen_parts(difficulty: str) -> None:
    rng = np.random.default_rng(0)
    target, donor = draw_face(rng), draw_face(rng)
    out = np.asarray(swap_parts(target, donor, "1001", difficulty), dtype=np.int16)
    before = np.asarray(target, dtype=np.int16)
    changed = np.abs(out - before).sum(-1) > 0
    inside = np.zeros_like(changed)
    for part, bit in zip(PARTS, "1001", strict=True):
        x0, y0, x1, y1 = PART_BOXES[part]
        if bit == "1":
            inside[y0 : y1 + 1, x0 : x1 + 1] = True
            assert changed[y0:y1, x0:x1].mean() > 0.2, part
    assert not changed[~inside].any()


@pytest.mark.parametrize("difficulty", ["easy", "mid", "hard"])
def test_swap_matches_a_whole_canvas_blend(difficulty: str) -> None:
    """The box-local swap blends as the plain recipe does on the whole canvas: easy pastes the box,
    mid a feathered ellipse (blur 4 px) half colour-matched, hard a soft one (10 px) fully matched."""
    radius, match = {"easy": (0, 0.0), "mid": (4, 0.5), "hard": (10, 1.0)}[difficulty]
    rng = np.random.default_rng(1)
    target, donor = draw_face(rng), draw_face(rng)
    want, src = np.asarray(target, dtype=np.float64), np.asarray(donor, dtype=np.float64)
    for x0, y0, x1, y1 in PART_BOXES.values():
        canvas = Image.new("L", want.shape[1::-1], 0)
        if radius:
            inset = 2 * radius
            ImageDraw.Draw(canvas).ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=255)
            canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
        else:
            canvas.paste(255, (x0, y0, x1, y1))
        weights = np.zeros((*want.shape[:2], 1))
        weights[y0:y1, x0:x1, 0] = np.asarray(canvas)[y0:y1, x0:x1] / 255  # never outside the box
        t, s = want[y0:y1, x0:x1].reshape(-1, 3), src[y0:y1, x0:x1].reshape(-1, 3)
        scale = 1 + match * (t.std(0) / (s.std(0) + 1e-3) - 1)
        patch = (src - s.mean(0)) * scale + s.mean(0) + match * (t.mean(0) - s.mean(0))
        want = want * (1 - weights) + patch * weights
    got = np.asarray(swap_parts(target, donor, "1111", difficulty), dtype=np.float64)
    assert np.abs(got - np.clip(want, 0, 255)).max() <= 1  # rounding only


def test_no_global_colour_cue(tiny_synthetic: Path) -> None:
    def means(folder: str) -> np.ndarray:
        files = sorted((tiny_synthetic / TREE / folder).iterdir())
        return np.array([np.asarray(Image.open(f), dtype=np.float32).mean((0, 1)) for f in files])

    real, fake = means("training_real"), means("training_fake")
    spread = np.concatenate([real, fake]).std(0)
    # Class means of whole-image colour differ by far less than images differ from each other.
    assert (np.abs(real.mean(0) - fake.mean(0)) < 0.6 * spread).all()


def test_ensure_reuses_and_protects_user_folders(tmp_path: Path) -> None:
    out = tmp_path / "s"
    tree = ensure_synthetic(out, 2, 2, seed=0, method="mixed")
    first = next((tree / "training_real").iterdir())
    stamp = first.stat().st_mtime_ns
    ensure_synthetic(out, 2, 2, seed=0, method="mixed")
    assert first.stat().st_mtime_ns == stamp  # reused, not regenerated
    user = tmp_path / "mine"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FfdError, match="refusing to write"):
        ensure_synthetic(user, 2, 2, seed=0, method="mixed")
    assert (user / "holiday.jpg").read_bytes() == b"precious"


def test_synthetic_root_must_be_a_folder(tmp_path: Path) -> None:
    csv = tmp_path / "faces.csv"
    csv.write_text("path,label\n")
    with pytest.raises(FfdError, match="is a file.*data=ciplab"):
        ensure_synthetic(csv, 2, 2, seed=0, method="mixed")
