from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import LIMITS, split_settings, write_jpegs

from ffd.data.facts import FAKE, REAL, parse_fake_name
from ffd.data.layouts import CsvError, DataLayoutError, discover
from ffd.data.manifest import LeakageError, build_manifest, check_no_leakage
from ffd.data.records import Record, read_manifest, write_manifest
from ffd.errors import ConfigError

FAKE_NAMES = [
    f"{d}_{i}_{bits}.jpg"
    for i, (d, bits) in enumerate(
        [
            ("easy", "1000"),
            ("easy", "0110"),
            ("mid", "0001"),
            ("mid", "1111"),
            ("mid", "0100"),
            ("hard", "1010"),
        ]
        * 5
    )
]


def ciplab_tree(root: Path, n_real: int = 30) -> Path:
    tree = root / "real_and_fake_face"
    write_jpegs(tree / "training_real", [f"real_{i:05d}.jpg" for i in range(1, n_real + 1)], seed=1)
    write_jpegs(tree / "training_fake", FAKE_NAMES, seed=2)
    return tree


def test_parse_fake_name() -> None:
    assert parse_fake_name("/x/hard_12_1010.jpg") == ("hard", "1010")
    assert parse_fake_name("mid_1_0001.JPG") == ("mid", "0001")
    assert parse_fake_name("real_00001.jpg") == ("", "")
    assert parse_fake_name("hard_12_10.jpg") == ("", "")


def test_discovers_nested_archive_and_drops_duplicate_tree(tmp_path: Path) -> None:
    ciplab_tree(tmp_path)
    # The Kaggle archive also unpacks an identical second tree.
    shutil.copytree(
        tmp_path / "real_and_fake_face",
        tmp_path / "real_and_fake_face_detection" / "real_and_fake_face",
    )
    records = build_manifest(tmp_path, **split_settings(seed=0))
    assert len(records) == 2 * (30 + 30)
    kept = [r for r in records if r.ok]
    dupes = [r for r in records if r.status == "duplicate"]
    assert len(kept) == len(dupes) == 60
    assert all("/real_and_fake_face/training_" in r.path for r in kept)
    assert all("same content as" in r.reason and not r.split for r in dupes)
    labels = Counter(r.label for r in kept)
    assert labels == {REAL: 30, FAKE: 30}
    hard = [r for r in kept if r.difficulty == "hard"]
    assert len(hard) == 5 and all(r.parts == "1010" and r.label == FAKE for r in hard)
    assert all(r.difficulty == "" and r.parts == "" for r in kept if r.label == REAL)


def test_split_is_stratified_disjoint_and_deterministic(tmp_path: Path) -> None:
    ciplab_tree(tmp_path, n_real=40)
    a = build_manifest(tmp_path, 0.15, 0.15, seed=3, limits=LIMITS)
    b = build_manifest(tmp_path, 0.15, 0.15, seed=3, limits=LIMITS)
    c = build_manifest(tmp_path, 0.15, 0.15, seed=4, limits=LIMITS)
    assert [r.split for r in a] == [r.split for r in b]
    assert [r.split for r in a] != [r.split for r in c]
    counts = Counter((r.label, r.split) for r in a)
    assert counts[REAL, "train"] == 28 and counts[REAL, "val"] == 6 and counts[REAL, "test"] == 6
    # Fakes are stratified by difficulty too: easy 10, mid 15, hard 5 -> 2/2/0 or 1/1 in test.
    for difficulty, n in (("easy", 10), ("mid", 15), ("hard", 5)):
        test = [r for r in a if r.difficulty == difficulty and r.split == "test"]
        assert len(test) == round(n * 0.15)
    splits_of_hash: dict[str, set[str]] = {}
    for r in a:
        splits_of_hash.setdefault(r.sha256, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of_hash.values())


def test_split_does_not_depend_on_file_names(tmp_path: Path) -> None:
    tree = ciplab_tree(tmp_path / "a")
    before = {r.sha256: r.split for r in build_manifest(tmp_path / "a", **split_settings(seed=0))}
    for p in (tree / "training_real").iterdir():
        p.rename(p.with_name("x" + p.name))
    after = {r.sha256: r.split for r in build_manifest(tmp_path / "a", **split_settings(seed=0))}
    assert before == after


def test_leakage_is_an_error() -> None:
    rows = [
        Record("/a.jpg", REAL, "x", sha256="h", split="train"),
        Record("/b.jpg", REAL, "x", sha256="h", split="test"),
    ]
    with pytest.raises(LeakageError, match="both train and test"):
        check_no_leakage(rows)


def test_bad_files_are_recorded_not_fatal(tmp_path: Path) -> None:
    tree = ciplab_tree(tmp_path)
    fake_dir = tree / "training_fake"
    (fake_dir / "mid_90_0001.jpg").write_bytes(b"")
    (fake_dir / "mid_91_0001.jpg").write_text("this is not an image")
    good = (fake_dir / "easy_0_1000.jpg").read_bytes()
    (fake_dir / "mid_92_0001.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (fake_dir / "mid_93_0001.jpg").write_bytes(good[:20] + b"\x00" * 50 + good[70:])  # corrupt header
    records = {Path(r.path).name: r for r in build_manifest(tmp_path, **split_settings(seed=0))}
    assert records["mid_90_0001.jpg"].reason == "empty file (0 bytes)"
    for name in ("mid_90_0001.jpg", "mid_91_0001.jpg", "mid_92_0001.jpg", "mid_93_0001.jpg"):
        assert records[name].status == "unreadable" and records[name].reason and not records[name].split
    assert sum(r.ok for r in records.values()) == 60


def test_missing_folder_names_layout_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match="does not exist") as err:
        discover(tmp_path / "nope")
    assert "training_real" in str(err.value) and "ffd data +experiment=seed" in str(err.value)


def test_unknown_layout(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "pictures", ["a.jpg"])
    with pytest.raises(DataLayoutError, match="No known image layout"):
        discover(tmp_path)


def test_empty_class_folder(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "training_real", ["real_00001.jpg"])
    (tmp_path / "training_fake").mkdir()
    with pytest.raises(DataLayoutError, match="fake folder .* holds no images"):
        discover(tmp_path)


def test_class_without_readable_image(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "real", ["a.jpg", "b.jpg"])
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DataLayoutError, match="No readable fake image"):
        build_manifest(tmp_path, **split_settings())


def test_other_layouts(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "flat" / "real", ["a.jpg", "b.jpg"], seed=1)
    write_jpegs(tmp_path / "flat" / "fake", ["c.png"], seed=2)
    flat = discover(tmp_path / "flat")
    assert sorted((Path(r.path).name, r.label, r.source) for r in flat) == [
        ("a.jpg", 0, "folders"),
        ("b.jpg", 0, "folders"),
        ("c.png", 1, "folders"),
    ]
    for split in ("train", "valid", "test"):
        write_jpegs(tmp_path / "pre" / split / "real", ["r.jpg"], seed=3)
        write_jpegs(tmp_path / "pre" / split / "fake", ["f.jpg"], seed=4)
    pre = build_manifest(tmp_path / "pre", **split_settings())
    assert Counter(r.split for r in pre) == {"train": 2, "val": 2, "test": 2}
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\nflat/real/a.jpg,real\nflat/fake/c.png,1\n")
    rows = discover(csv)
    assert [(Path(r.path).name, r.label) for r in rows] == [("a.jpg", 0), ("c.png", 1)]
    csv.write_text("path,label\nflat/real/a.jpg,maybe\n")
    with pytest.raises(CsvError, match="line 2, column label: 'maybe'"):
        discover(csv)


def test_manifest_round_trip(tmp_path: Path) -> None:
    ciplab_tree(tmp_path / "d")
    records = build_manifest(tmp_path / "d", **split_settings())
    write_manifest(records, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == records


def test_csv_split_column(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "img", ["a.jpg", "b.jpg"], seed=5)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,split\nimg/a.jpg,real,train\nimg/b.jpg,fake,valid\n")
    assert [r.split for r in discover(csv)] == ["train", "val"]
    csv.write_text("path,label,split\nimg/a.jpg,real,training\n")
    with pytest.raises(CsvError, match="line 2, column split: 'training'"):
        discover(csv)


def test_bad_fractions_are_config_errors(tmp_path: Path) -> None:
    ciplab_tree(tmp_path)
    with pytest.raises(ConfigError, match="test_fraction .* must be >= 0 and sum below 1"):
        build_manifest(tmp_path, 0.6, 0.5, seed=0, limits=LIMITS)


def test_a_split_the_folders_lack_is_carved_from_train(tmp_path: Path) -> None:
    for split, n in (("train", 10), ("valid", 2)):
        write_jpegs(tmp_path / split / "real", [f"{i}.jpg" for i in range(n)], seed=1)
        write_jpegs(tmp_path / split / "fake", [f"{i}.jpg" for i in range(n)], seed=2)
    records = build_manifest(tmp_path, **split_settings(test_fraction=0.2))
    assert Counter((Path(r.path).parts[-3], r.split) for r in records) == {
        ("train", "train"): 16,
        ("train", "test"): 4,  # 20 % of each class's train images
        ("valid", "val"): 4,
    }
    again = build_manifest(tmp_path, **split_settings(test_fraction=0.2))
    assert [r.split for r in again] == [r.split for r in records]


def test_a_split_carved_from_small_strata_is_not_empty() -> None:
    """Two generators of 3 real + 3 fake train images each, no val folder: 15 % of each (class, method)
    stratum rounds to none, so val is carved by class alone (one of each) rather than left empty."""
    from ffd.data.splits import carve_missing

    rows = [Record(f"/{g}/{c}{i}.png", label, "genimage", sha256=f"{g}{c}{i}", split=split, method=g)
            for g in ("adm", "glide") for label, c in ((0, "r"), (1, "f"))
            for i, split in enumerate(["train"] * 3 + ["test"])]  # fmt: skip
    train = [r for r in rows if r.split == "train"]
    carve_missing(rows, train, 0.15, 0.15, seed=0)
    val = [r for r in rows if r.split == "val"]
    assert sorted(r.label for r in val) == [0, 1] and sum(r.split == "test" for r in rows) == 4
