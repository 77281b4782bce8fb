"""The scaling bench's larger sets: distinct files in CIPLAB's layout and name scheme."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import LIMITS
from PIL import Image

from ffd.data.facts import parse_fake_name
from ffd.data.manifest import scan
from ffd.studies.scaling import SOURCE_SIDE, scaled_set


def test_scaled_set_holds_distinct_copies_in_ciplabs_scheme(tiny_synthetic: Path, tmp_path: Path) -> None:
    tree = tiny_synthetic / "real_and_fake_face"
    out = scaled_set(tree, tmp_path / "x3", 3)
    records = scan(out, LIMITS)
    assert len(records) == 3 * 32 and sum(r.label for r in records) == 3 * 16
    hashes = {hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in records}
    assert len(hashes) == len(records)  # nothing the manifest would drop as a duplicate
    originals = {parse_fake_name(p) for p in (tree / "training_fake").iterdir()}
    assert {(r.difficulty, r.parts) for r in records if r.label} == originals
    assert all(r.ok for r in records)
    with Image.open(records[0].path) as img:
        assert img.size == (SOURCE_SIDE, SOURCE_SIDE)
    stamp = (out / "scaled.json").stat().st_mtime_ns
    assert scaled_set(tree, tmp_path / "x3", 3) == out and (out / "scaled.json").stat().st_mtime_ns == stamp
