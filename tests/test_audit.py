"""Cross-validation folds, the label-shuffle control, the metadata baseline and the audit report."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LIMITS, TINY, split_settings, write_jpegs
from PIL import Image

from ffd.data.manifest import build_manifest
from ffd.data.records import Record
from ffd.errors import ConfigError
from ffd.metrics.metadata_baseline import metadata_baseline
from ffd.studies.shortcut_audit import audit
from ffd.training.crossval import cross_validate
from ffd.training.fitting import train


def test_cv_folds_are_disjoint_stratified_and_keep_the_test_split(tiny_synthetic: Path) -> None:
    plain = build_manifest(tiny_synthetic, **split_settings(seed=3))
    test = {r.sha256 for r in plain if r.split == "test"}
    vals, per_stratum = [], []
    for fold in range(4):
        records = build_manifest(tiny_synthetic, **split_settings(seed=3), fold=(4, fold))
        assert {r.sha256 for r in records if r.split == "test"} == test
        vals.append({r.sha256: r.label for r in records if r.split == "val"})
    seen: set[str] = set()
    for val in vals:
        assert not seen & set(val)  # no image in two folds
        seen |= set(val)
        strata = Counter((r.label, r.difficulty) for r in records if r.split == "val")
        per_stratum.append(strata)
    assert seen == {r.sha256 for r in plain if r.ok} - test
    for stratum in {key for counts in per_stratum for key in counts}:  # each stratum dealt evenly
        sizes = [counts[stratum] for counts in per_stratum]
        assert max(sizes) - min(sizes) <= 1, (stratum, sizes)


def test_cv_refuses_presplit_data(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        write_jpegs(tmp_path / split / "real", ["r.jpg"], seed=1)
        write_jpegs(tmp_path / split / "fake", ["f.jpg"], seed=2)
    with pytest.raises(ConfigError, match="pre-split"):
        build_manifest(tmp_path, **split_settings(), fold=(2, 0))


@pytest.mark.slow
def test_cross_validate_trains_every_fold(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    cfg = make_cfg("+debug=fdr", f"data.root={tiny_synthetic}", *TINY, "cv.folds=3")
    summary = cross_validate(cfg, train)
    assert summary["val/acc"]["folds"] and len(summary["val/acc"]["folds"]) == 3
    out = tmp_path / "train"
    assert json.loads((out / "cv_summary.json").read_text()) == summary
    manifests = [(out / f"fold_{i}" / "manifest.csv").read_text() for i in range(3)]
    assert len(set(manifests)) == 3  # each fold validates on different images
    assert not any(k.startswith("test/") for k in json.loads((out / "fold_0" / "metrics.json").read_text()))


@pytest.mark.slow
def test_shuffled_control_is_at_chance(make_cfg, tmp_path: Path) -> None:
    """The recipe that learns this set (see test_train) is at chance when its labels are permuted.

    One run of a head on permuted labels is a random function of well-separated features,
    so its test AUROC spreads around 0.5 (+/- ~0.1): the mean of three runs is what is checked.
    """
    aurocs = []
    for seed in (42, 43, 44):
        cfg = make_cfg(
            "+experiment=control_shuffled", f"data.root={tmp_path / 'synthetic'}",
            "data.synthetic.num_real=200", "data.synthetic.num_fake=200", "data.split.test_fraction=0.3",
            "model.input_size=160",
            "trainer.max_epochs=8", "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0",
            f"seed={seed}",
        )  # fmt: skip
        aurocs.append(train(cfg)["test/auroc"])
    assert abs(sum(aurocs) / 3 - 0.5) < 0.15, aurocs


def _jpegs(folder: Path, n: int, quality: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        smooth = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(smooth).resize((96, 96), Image.Resampling.BICUBIC)
        noise = rng.normal(0, rng.uniform(2, 12), (96, 96, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        paths.append(folder / f"{i}.jpg")
        img.save(paths[-1], "JPEG", quality=quality)
    return paths


def test_metadata_baseline_flags_a_planted_shortcut(tmp_path: Path) -> None:
    real = _jpegs(tmp_path / "a" / "real", 60, quality=92, seed=1)
    fake = _jpegs(tmp_path / "a" / "fake", 60, quality=60, seed=2)  # the shortcut: another JPEG quality
    rows = [Record(str(p), 0, "x") for p in real] + [Record(str(p), 1, "x") for p in fake]
    shortcut = metadata_baseline(rows, seed=0)
    assert shortcut["shortcut"] and shortcut["auroc"] > 0.9, shortcut
    real = _jpegs(tmp_path / "b" / "real", 60, quality=85, seed=3)
    fake = _jpegs(tmp_path / "b" / "fake", 60, quality=85, seed=4)
    rows = [Record(str(p), 0, "x") for p in real] + [Record(str(p), 1, "x") for p in fake]
    clean = metadata_baseline(rows, seed=0)
    assert not clean["shortcut"] and clean["auroc"] < 0.7, clean


def test_png_fakes_beside_jpeg_reals_are_a_format_shortcut(tmp_path: Path) -> None:
    """GenImage's bias: the same kind of pictures, reals saved as JPEG and fakes as PNG. The baseline
    sees the format (an explicit feature), says so with a CI and the fix."""
    real = _jpegs(tmp_path / "real", 40, quality=90, seed=1)
    fake = [
        Image.open(p).save(p.with_suffix(".png")) or p.with_suffix(".png")
        for p in _jpegs(tmp_path / "f", 40, 90, 2)
    ]
    rows = [Record(str(p), 0, "x") for p in real] + [Record(str(p), 1, "x") for p in fake]
    found = metadata_baseline(rows, seed=0, n_bootstrap=200)
    assert found["shortcut"] and found["auroc"] > 0.95 and found["auroc_ci95"][0] > 0.7, found
    assert found["formats"] == {"real": {"JPEG": 40}, "fake": {"PNG": 40}}
    assert "SHORTCUT" in found["finding"] and "data.reencode=true" in found["finding"]


def test_metadata_baseline_does_not_flag_the_synthetic_set(tiny_synthetic: Path) -> None:
    assert not metadata_baseline(build_manifest(tiny_synthetic, **split_settings()), seed=0)["shortcut"]


@pytest.mark.slow
def test_audit_writes_one_report(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    cfg = make_cfg("+debug=fdr", f"data.root={tiny_synthetic}", *TINY, "control_repeats=2", config="audit")
    report = audit(cfg)
    assert set(report) == {"leakage", "shuffled_control", "metadata_baseline"}
    assert report["leakage"]["usable"] == 32 and len(report["shuffled_control"]["test_auroc_runs"]) == 2
    text = (tmp_path / "audit" / "audit.md").read_text()
    assert "Label-shuffle control" in text and "Metadata-only baseline" in text


def _biased_set(root: Path) -> Path:
    """reals as JPEG, fakes as PNG (the same kind of pictures otherwise): GenImage's format bias."""
    for p in _jpegs(root / "f_src", 20, quality=90, seed=6):
        (root / "fake").mkdir(exist_ok=True)
        Image.open(p).save(root / "fake" / f"{p.stem}.png")
    _jpegs(root / "real", 20, quality=90, seed=5)
    shutil.rmtree(root / "f_src")
    return root


def test_training_reports_a_format_shortcut_and_says_when_reencode_hides_it(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    biased = _biased_set(tmp_path / "biased")
    for reencode in (False, True):
        cfg = make_cfg(
            "+debug=fdr", f"data.root={biased}", *TINY, f"data.reencode={reencode}", "runtime=torch"
        )
        cfg.paths.output_dir = str(tmp_path / f"run_{reencode}")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ffd"):
            train(cfg)
        found = json.loads((tmp_path / f"run_{reencode}" / "shortcut.json").read_text())
        assert found["shortcut"] and found["formats"]["fake"] == {
            "PNG": found["n"] - sum(found["formats"]["real"].values())
        }
        assert found["reencode"] is reencode
        if reencode:
            assert "re-encodes every image as a JPEG" in caplog.text and "SHORTCUT" not in caplog.text
        else:
            assert "FORMAT/METADATA SHORTCUT" in caplog.text and "data.reencode=true" in caplog.text


def test_reencode_gives_every_image_the_same_jpeg_path(tmp_path: Path) -> None:
    """A PNG fake and a JPEG real alike reach the model as the JPEG of a quality drawn by their path
    (the same each time, differing between files), whatever their own format was."""
    from ffd.data.decoding import Decoder, pixels
    from ffd.data.images import DecodedImages
    from ffd.data.reencode import QUALITY, Reencode

    biased = _biased_set(tmp_path)
    files = sorted(biased.rglob("*.*"))
    reencode = Reencode(seed=3)
    qualities = {reencode.quality(str(p)) for p in files}
    assert len(qualities) > 5 and all(QUALITY[0] <= q <= QUALITY[1] for q in qualities)
    kept = DecodedImages(pixels, None, LIMITS, reencode)
    for p in files:
        expected = io.BytesIO()
        Image.open(p).convert("RGB").save(expected, "JPEG", quality=reencode.quality(str(p)))
        want = pixels(Image.open(expected).convert("RGB"))
        assert torch.equal(kept.get(p), want), p
        assert torch.equal(Decoder(4096, LIMITS, reencode=reencode)(p).image, want), p
        assert not torch.equal(kept.get(p), pixels(Image.open(p).convert("RGB")))  # it did change
