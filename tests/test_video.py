"""Videos: synthetic clips, frame sampling, face tracking, the crop cache, layouts and group splits."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import LIMITS

from ffd.data.faces import Face, iou
from ffd.data.manifest import build_manifest
from ffd.data.records import Record, read_manifest, write_manifest
from ffd.data.synthetic_video import ensure_synthetic_video
from ffd.data.video.crops import INDEX, CropSettings, extract
from ffd.data.video.decode import VideoDecodeError, read_frames, sample_indices
from ffd.data.video.track import track
from ffd.data.video.video_layouts import discover_videos
from ffd.errors import FfdError

SETTINGS = CropSettings(frames=4, stride=None, scale=1.3, size=48, detector="haar")
SPEC = {"identities": 4, "methods": ["Deepfakes", "FaceSwap"], "frames": 8, "size": 128, "seed": 3}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 people x (1 real + 2 fakes), 8 frames of 128 px each, with FF++'s split files."""
    out = tmp_path_factory.mktemp("ffpp")
    return ensure_synthetic_video(out, **SPEC, splits=True)


def test_sampling() -> None:
    assert sample_indices(100, 4, None) == [12, 37, 62, 87]  # the centres of 4 equal parts
    assert sample_indices(3, 32, None) == [0, 1, 2]  # a short video: every frame, none twice
    assert sample_indices(10, 3, 2) == [0, 2, 4] and sample_indices(10, None, 4) == [0, 4, 8]
    evenly = sample_indices(301, 32, None)
    assert len(evenly) == len(set(evenly)) == 32 and evenly[0] < 10 and evenly[-1] > 290


def test_the_synthetic_set_is_laid_out_like_ffpp(videos: Path) -> None:
    reals = sorted(p.name for p in (videos / "original_sequences/youtube/c23/videos").glob("*.mp4"))
    fakes = sorted(p.name for p in (videos / "manipulated_sequences/FaceSwap/c23/videos").glob("*.mp4"))
    assert reals == ["000.mp4", "001.mp4", "002.mp4", "003.mp4"]
    assert fakes == ["000_001.mp4", "001_000.mp4", "002_003.mp4", "003_002.mp4"]
    splits = {s: json.loads((videos / "splits" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert sorted(p for pairs in splits.values() for pair in pairs for p in pair) == [
        "000",
        "001",
        "002",
        "003",
    ]
    frames = list(read_frames(videos / "original_sequences/youtube/c23/videos/000.mp4", range(8)))
    assert [i for i, _ in frames] == list(range(8)) and frames[0][1].size == (128, 128)
    # A fake replays its target's clip: the same motion, but the face differs where the swap is.
    real = np.asarray(frames[3][1], dtype=np.float32)
    fake_frames = dict(read_frames(videos / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4", [3]))
    diff = np.abs(np.asarray(fake_frames[3], dtype=np.float32) - real).mean(axis=2)
    assert diff[45:85, 45:85].mean() > 3 * diff[:15, :15].mean()  # the face changed, the corner did not


def test_generation_is_deterministic_and_refuses_foreign_folders(videos: Path, tmp_path: Path) -> None:
    again = ensure_synthetic_video(tmp_path / "again", **SPEC, splits=True)
    for rel in (
        "original_sequences/youtube/c23/videos/002.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/003_002.mp4",
    ):
        assert (again / rel).read_bytes() == (videos / rel).read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.mp4").write_bytes(b"x")
    with pytest.raises(FfdError, match="not made by ffd's video generator"):
        ensure_synthetic_video(tmp_path / "mine", **SPEC)


def test_tracker_follows_the_true_face(videos: Path, tmp_path: Path) -> None:
    truth = json.loads((videos / "boxes.json").read_text())
    rel = "manipulated_sequences/FaceSwap/c23/videos/001_000.mp4"
    crops = extract(videos / rel, CropSettings(None, None, 1.3, 48, "haar"), tmp_path, LIMITS)
    index = json.loads(next((tmp_path / "video-crops").glob("*/" + INDEX)).read_text())
    overlaps = [iou(tuple(box), tuple(truth[rel][int(i)])) for i, box in index["boxes"].items()]
    assert len(crops.crops) >= 6 and np.median(overlaps) > 0.6, overlaps


def test_tracker_keeps_the_first_face_when_another_grows() -> None:
    me, other = Face((10, 10, 50, 50), 1.0), Face((100, 10, 130, 40), 1.0)
    bigger = Face((90, 0, 160, 70), 1.0)
    moved = Face((14, 12, 54, 52), 1.0)
    assert track([[me, other], [bigger, moved], [], [moved]]) == [me, moved, None, moved]
    assert track([[], [other]]) == [None, other]  # the track starts at the first frame with a face


def test_crop_cache_is_reused_keyed_and_never_half_trusted(videos: Path, tmp_path: Path) -> None:
    clip = videos / "original_sequences/youtube/c23/videos/001.mp4"
    first = extract(clip, SETTINGS, tmp_path, LIMITS)
    assert first.seconds > 0 and sorted(first.crops) == first.sampled == [1, 3, 5, 7]
    assert extract(clip, SETTINGS, tmp_path, LIMITS).seconds == 0  # from the cache
    other = extract(clip, CropSettings(2, None, 1.3, 48, "haar"), tmp_path, LIMITS)
    assert other.crops[2].parent != first.crops[1].parent  # other settings, other key
    folder = first.crops[1].parent
    # A killed extraction: a partial folder and a folder without its index are both redone.
    (folder / INDEX).unlink()
    (folder.parent / f"{folder.name}.partial-999").mkdir()
    redone = extract(clip, SETTINGS, tmp_path, LIMITS)
    assert redone.seconds > 0 and (folder / INDEX).exists()
    assert not list(folder.parent.glob("*.partial-*"))
    with pytest.raises(VideoDecodeError, match="not a readable video"):
        (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
        extract(tmp_path / "broken.mp4", SETTINGS, tmp_path, LIMITS)


def test_ffpp_manifest_splits_by_pair_never_by_frame(videos: Path, tmp_path: Path) -> None:
    rows = build_manifest(videos, 0.25, 0.25, 0, LIMITS, video=SETTINGS, cache_dir=tmp_path)
    ok = [r for r in rows if r.ok]
    assert len(ok) == 12 * 4 and {r.method for r in ok} == {"original", "Deepfakes", "FaceSwap"}
    assert {r.frame for r in ok} == {1, 3, 5, 7} and all(Path(r.path).suffix == ".png" for r in ok)
    split_of_person: dict[str, set[str]] = defaultdict(set)
    for r in ok:
        for person in r.identity.split("+"):
            split_of_person[person].add(r.split)
    assert all(len(s) == 1 for s in split_of_person.values()), split_of_person
    official = {
        p: s
        for s in ("train", "val", "test")
        for pair in json.loads((videos / "splits" / f"{s}.json").read_text())
        for p in pair
    }
    assert {p: s.pop() for p, s in split_of_person.items()} == official
    write_manifest(rows, tmp_path / "manifest.csv")
    assert read_manifest(tmp_path / "manifest.csv") == rows  # frame stays an int, images' stays None


def test_group_split_without_official_lists(videos: Path, tmp_path: Path) -> None:
    root = tmp_path / "ffpp"
    shutil.copytree(videos, root, ignore=shutil.ignore_patterns("splits", "*.json"))
    rows = [r for r in build_manifest(root, 0.0, 0.5, 0, LIMITS, video=SETTINGS, cache_dir=tmp_path) if r.ok]
    splits = defaultdict(set)
    for r in rows:
        splits[r.video].add(r.split)
    assert all(len(s) == 1 for s in splits.values())  # every crop of a video in one split
    people = defaultdict(set)
    for r in rows:
        for p in r.identity.split("+"):
            people[p].add(r.split)
    assert all(len(s) == 1 for s in people.values())  # and both people of a pair with it
    assert sorted(len(v) for v in people.values()) == [1] * 4 and {r.split for r in rows} == {"train", "test"}


def test_old_image_manifests_still_read(tmp_path: Path) -> None:
    old = tmp_path / "manifest.csv"
    old.write_text(
        "path,label,source,difficulty,parts,sha256,split,status,reason\n/x/a.jpg,1,ciplab,easy,1000,ab,test,ok,\n"
    )
    (row,) = read_manifest(old)
    assert row == Record("/x/a.jpg", 1, "ciplab", "easy", "1000", "ab", "test") and row.frame is None


def _copy(clip: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, dest)


def test_celebdf_dfdc_and_plain_folders(videos: Path, tmp_path: Path) -> None:
    real = videos / "original_sequences/youtube/c23/videos/000.mp4"
    fake = videos / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4"
    celeb = tmp_path / "celeb"
    _copy(real, celeb / "Celeb-real" / "id0_0000.mp4")
    _copy(real, celeb / "YouTube-real" / "00001.mp4")
    _copy(fake, celeb / "Celeb-synthesis" / "videos" / "id0_id3_0000.mp4")
    (celeb / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id0_id3_0000.mp4\n"
    )
    rows = {Path(r.path).name: r for r in discover_videos(celeb) or []}
    assert rows["id0_id3_0000.mp4"].label == 1 and rows["id0_id3_0000.mp4"].identity == "id0"
    assert rows["00001.mp4"].split == "test" and rows["id0_0000.mp4"].split == ""
    (celeb / "List_of_testing_videos.txt").write_text("real YouTube-real/00001.mp4\n")
    with pytest.raises(FfdError, match="line 1"):
        discover_videos(celeb)

    dfdc = tmp_path / "dfdc" / "dfdc_train_part_0"
    _copy(real, dfdc / "aaa.mp4")
    _copy(fake, dfdc / "bbb.mp4")
    meta = {
        "aaa.mp4": {"label": "REAL", "split": "train"},
        "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4"},
    }
    (dfdc / "metadata.json").write_text(json.dumps(meta))
    rows = {Path(r.path).name: r for r in discover_videos(dfdc.parent) or []}
    assert (rows["aaa.mp4"].label, rows["bbb.mp4"].label) == (0, 1)
    assert rows["aaa.mp4"].identity == rows["bbb.mp4"].identity == "aaa"  # a fake goes with its original

    plain = tmp_path / "plain"
    _copy(real, plain / "real" / "a.mp4")
    _copy(fake, plain / "fake" / "b.mp4")
    rows = build_manifest(plain, 0.0, 0.0, 0, LIMITS, video=SETTINGS, cache_dir=tmp_path)
    assert sorted({(Path(r.video).name, r.label) for r in rows}) == [("a.mp4", 0), ("b.mp4", 1)]
    assert discover_videos(tmp_path / "nothing") is None
