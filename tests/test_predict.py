"""ffd.predict: inputs, per-file statuses, image-mode conversions, parity with eval."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LIMITS, write_jpegs
from PIL import Image, ImageOps
from torchvision.transforms import v2 as TV

from ffd.data.io import expand_input, load_rgb
from ffd.deploy.predicting import predict, predict_files
from ffd.engine.scorers import load_scorer
from ffd.errors import FfdError
from ffd.evaluation.evaluating import evaluate
from ffd.models.checkpoint import load_checkpoint


def test_input_kinds(tmp_path: Path) -> None:
    files = write_jpegs(tmp_path / "photos" / "sub", ["a.jpg", "b.jpg"]) + write_jpegs(
        tmp_path / "photos", ["c.png"]
    )
    assert expand_input(str(files[0])) == [files[0]]
    assert expand_input(str(tmp_path / "photos")) == sorted(files)
    assert expand_input(str(tmp_path / "photos" / "**" / "*.jpg")) == sorted(files[:2])
    listing = tmp_path / "list.txt"
    listing.write_text("photos/c.png\n\nphotos/sub/a.jpg\n")
    assert expand_input(str(listing)) == [tmp_path / "photos/c.png", tmp_path / "photos/sub/a.jpg"]
    with pytest.raises(FfdError, match="names no image files"):
        expand_input(str(tmp_path / "*.gif"))
    with pytest.raises(FfdError, match="not an image, a folder"):
        expand_input(str(tmp_path / "nothing_here"))


def test_image_modes_are_converted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (40, 60))).astype(np.uint16)).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("grey.png", "rgba.png", "cmyk.jpg", "deep.png"):
        img = load_rgb(tmp_path / name, None, LIMITS)
        assert img.mode == "RGB" and img.size == (60, 40), name
    deep = np.asarray(load_rgb(tmp_path / "deep.png", None, LIMITS))
    assert deep.max() > 200 and deep.min() < 50  # scaled from 16 bits, not clipped to white
    assert load_rgb(tmp_path / "rotated.jpg", None, LIMITS).size == (40, 60)  # upright


def test_bad_files_get_a_status_and_the_run_goes_on(trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    good = write_jpegs(tmp_path, ["good.jpg"], size=96)[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # 196 M pixels: a decompression bomb
    files = [good] + [tmp_path / n for n in ("empty.jpg", "text.jpg", "cut.jpg", "bomb.png", "gone.jpg")]
    rows = {Path(r["path"]).name: r for r in predict(load_scorer(ckpt, "torch", None), files, 32, LIMITS)}
    assert rows["good.jpg"]["status"] == "ok" and 0 <= rows["good.jpg"]["p_fake"] <= 1
    assert rows["empty.jpg"]["message"] == "empty file (0 bytes)"
    assert "DecompressionBomb" in rows["bomb.png"]["message"]
    assert rows["gone.jpg"]["message"] == "no such file"
    for name in ("empty.jpg", "text.jpg", "cut.jpg", "bomb.png", "gone.jpg"):
        assert rows[name]["status"] == "unreadable" and rows[name]["p_fake"] is None, name


def independent_p_fake(ckpt: Path, paths: list[str]) -> torch.Tensor:
    """p_fake computed here, sharing no code with ffd's inference path: PIL decodes (JPEGs at the DCT
    scale that still covers the input size, as ffd documents), torchvision resizes (rounded to whole
    pixel values, as ffd documents) and normalizes with the checkpoint's own preprocessing, then the
    model's forward in fp32 and its temperature."""
    ffd = torch.load(ckpt, map_location="cpu", weights_only=True)["ffd"]
    pre = ffd["preprocess"]
    size = pre["size"]
    resize = TV.Resize((size, size), TV.InterpolationMode(pre["interpolation"]), antialias=True)
    images = []
    for path in paths:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            pixels = TV.functional.pil_to_tensor(ImageOps.exif_transpose(img).convert("RGB"))
        resized = resize(pixels.float()).round().clamp(0, 255)  # whole pixel values, as training's views
        images.append(TV.functional.normalize(resized / 255, pre["mean"], pre["std"]))
    with torch.no_grad():
        logits = load_checkpoint(ckpt)(torch.stack(images)).double()
    return (logits / ffd["temperature"]).softmax(-1)[:, 1].float()


def test_eval_and_predict_score_what_the_model_sees(make_cfg, trained, tmp_path: Path) -> None:
    """eval, the predict CLI (``runtime=auto``) and predict with the backbone in each installed runtime give
    each test image the p_fake of the model's own forward (to export parity), and the same labels."""
    from ffd.engine.runtimes.chooser import available

    ckpt, _ = trained
    evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=0", config="eval"))
    with (tmp_path / "eval" / "predictions.csv").open() as fh:
        from_eval = {r["path"]: float(r["p_fake"]) for r in csv.DictReader(fh)}
    paths = sorted(from_eval)
    listing = tmp_path / "test_images.txt"
    listing.write_text("\n".join(paths))
    out = tmp_path / "preds.jsonl"
    cmd = [sys.executable, "-m", "ffd.predict", f"ckpt_path={ckpt}", f"input={listing}", f"output={out}"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert (
        result.returncode == 0 and "Backbone runtime:" in result.stdout + result.stderr
    )  # auto says its choice
    rows = {"cli auto": {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}}
    for runtime in [r for r in ("torch", "onnxruntime", "openvino") if available(r)]:
        out = tmp_path / f"{runtime}.jsonl"
        predict_files(make_cfg(f"ckpt_path={ckpt}", f"input={listing}", f"output={out}", f"runtime={runtime}",
                               config="predict"))  # fmt: skip
        rows[runtime] = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    expected = independent_p_fake(ckpt, paths)
    assert expected.std() > 1e-3  # outputs that differ from image to image, by far more than atol
    threshold = torch.load(ckpt, weights_only=True)["ffd"]["threshold_logit"]
    scores = {"eval": from_eval, **{k: {p: r["p_fake"] for p, r in v.items()} for k, v in rows.items()}}
    for name, got in scores.items():
        assert sorted(got) == paths, name
        # torch runs the model's own graph; the other runtimes match its fp32 features to export parity
        atol = 1e-5 if name in ("eval", "torch") else 1e-4
        torch.testing.assert_close(
            torch.tensor([got[p] for p in paths]), expected, atol=atol, rtol=0, msg=name
        )
    for name, predicted in rows.items():
        assert all(
            r["label"] == ("fake" if r["logit"] >= threshold else "real") for r in predicted.values()
        ), name


def test_cli_fails_only_when_nothing_could_be_scored(trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    (tmp_path / "junk.jpg").write_text("junk")
    out = tmp_path / "p.csv"
    cmd = [
        sys.executable,
        "-m",
        "ffd.predict",
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'junk.jpg'}",
        f"output={out}",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 2 and "could be scored" in result.stdout + result.stderr
    assert "unreadable" in out.read_text()


def test_face_crop(trained, tmp_path: Path) -> None:
    from skimage import data

    from ffd.data.faces import FaceCropper

    ckpt, _ = trained
    photo = tmp_path / "astronaut.png"  # a 512 x 512 photo with one face, top left of centre
    Image.fromarray(data.astronaut()).save(photo)
    noise = write_jpegs(tmp_path, ["noise.jpg"], size=300)[0]
    left, top, right, bottom = FaceCropper(margin=0.25, detector="auto").box(Image.open(photo).convert("RGB"))
    assert 100 < left < 200 and 0 <= top < 100 and 250 < right < 350 and 150 < bottom < 250
    assert abs((right - left) - (bottom - top)) <= 2  # square

    crops = tmp_path / "crops"
    crops.mkdir()
    files = [noise, photo, tmp_path / "gone.jpg"]
    rows = list(
        predict(
            load_scorer(ckpt, "torch", None),
            files,
            32,
            LIMITS,
            cropper=FaceCropper(margin=0.25, detector="auto"),
            crops_dir=crops,
        )
    )
    assert [r["status"] for r in rows] == ["no_face", "ok", "unreadable"]  # in input order
    assert rows[0]["p_fake"] is None and "no face" in rows[0]["message"]
    saved = list(crops.glob("*.png"))
    assert [p.name for p in saved] == ["00001_astronaut.png"]
    assert Image.open(saved[0]).size == (right - left, bottom - top)


def test_crops_never_replace_earlier_files(make_cfg, trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    earlier = tmp_path / "crops" / "00000_face.png"
    earlier.parent.mkdir()
    earlier.write_bytes(b"made by an earlier run")
    photo = write_jpegs(tmp_path, ["photo.jpg"])[0]
    overrides = [f"ckpt_path={ckpt}", f"input={photo}", "face_crop=true", f"crops_dir={earlier.parent}"]
    cfg = make_cfg(*overrides, config="predict")
    with pytest.raises(FfdError, match="is not empty"):
        predict_files(cfg)
    assert earlier.read_bytes() == b"made by an earlier run"
