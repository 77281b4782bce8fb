"""Grad-CAM: maps, the localization score on planted cases, ffd.explain, the eval report, the callback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import LIMITS, TINY, tiny_model

from ffd.data.facts import PART_BOXES, part_boxes
from ffd.data.io import load_rgb
from ffd.data.records import read_manifest
from ffd.data.transforms import build_transform
from ffd.engine.gradcam import grad_cam
from ffd.errors import ConfigError
from ffd.evaluation.explaining import explain
from ffd.evaluation.localization import localization, localization_report
from ffd.models.module import FakeFaceClassifier
from ffd.models.shipped import inference_settings
from ffd.training.fitting import train


def test_localization_on_planted_maps() -> None:
    box = (10.0, 20.0, 30.0, 40.0)  # 20 x 20 of a 100 x 100 map: 4 % of the area
    inside = torch.zeros(100, 100)
    inside[25:35, 12:28] = 1.0
    assert localization(inside, [box]) == (pytest.approx(1.0), pytest.approx(0.04))
    assert localization(torch.ones(100, 100), [box])[0] == pytest.approx(0.04)  # uniform: chance
    half = torch.zeros(100, 100)
    half[30, 15], half[80, 80] = 1.0, 3.0  # a quarter of the mass inside
    assert localization(half, [box])[0] == pytest.approx(0.25)
    assert localization(half, [box, (75.0, 75.0, 85.0, 85.0)]) == (pytest.approx(1.0), pytest.approx(0.05))
    # Part boxes scale with the input: at 300 px they are half the 600 px boxes.
    assert part_boxes(["mouth"], 300) == [tuple(v / 2 for v in PART_BOXES["mouth"])]
    # Per part, each fake's heatmap is scored against its own replaced parts.
    cam = torch.zeros(600, 600)
    x0, y0, x1, y1 = PART_BOXES["nose"]
    cam[y0:y1, x0:x1] = 1.0
    report = localization_report([("0010", cam), ("1010", cam), ("", cam)])  # the real one is skipped
    assert report["nose"] == {
        "n": 2, "n_empty": 0, "mass_inside": 1.0, "area_share": pytest.approx(84 * 78 / 600**2)
    }  # fmt: skip
    assert report["left_eye"]["mass_inside"] == 0.0 and report["all"]["n"] == 2
    # An all-zero map (no evidence for "fake") is counted, not averaged in.
    empty = localization_report([("0010", cam), ("0010", torch.zeros(600, 600))])["nose"]
    assert empty["n"] == 2 and empty["n_empty"] == 1 and empty["mass_inside"] == 1.0


def planted_model() -> FakeFaceClassifier:
    """A random 64 px model whose head sees evidence for "fake" in every feature (weights >= 0)."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight[0] = 0
        linear.weight[1] = torch.rand(linear.weight.shape[1], generator=torch.Generator().manual_seed(0))
    return model


def test_grad_cam_maps(tiny_synthetic: Path) -> None:
    model = planted_model()
    paths = sorted(tiny_synthetic.rglob("*.jpg"))[:6]
    x = torch.stack([build_transform(model.preprocess)(load_rgb(p, 64, LIMITS)) for p in paths])
    for method in ("gradcam", "hirescam"):
        cams, logit = grad_cam(model, x, method)
        assert cams.shape == (6, 64, 64) and cams.min() >= 0
        torch.testing.assert_close(cams.amax((1, 2)), torch.ones(6))  # each scaled to [0, 1]
        assert (cams.flatten(1).std(1) > 0.01).all()  # not constant
        with torch.no_grad():
            torch.testing.assert_close(logit, model(x) @ torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    # With the flatten head each cell has its own weights: Grad-CAM's averaged gradient
    # and HiResCAM's cell-by-cell one differ. With an average-pooled head they agree.
    assert not torch.allclose(grad_cam(model, x, "gradcam")[0], grad_cam(model, x, "hirescam")[0])
    pooled = tiny_model(head="avgpool").eval()
    torch.testing.assert_close(grad_cam(pooled, x, "gradcam")[0], grad_cam(pooled, x, "hirescam")[0])
    # No evidence for "fake" anywhere (all head weights for "fake" <= those for "real"): empty maps.
    with torch.no_grad():
        model.head[-1].weight[1] *= -1
    assert grad_cam(model, x, "gradcam")[0].max() == 0


def test_explain_writes_overlays_and_scores(make_cfg, trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    rows = [r for r in read_manifest(ckpt.parent.parent / "manifest.csv") if r.split == "test"]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join([r.path for r in rows] + [str(tmp_path / "gone.jpg")]))
    report = explain(make_cfg(f"ckpt_path={ckpt}", f"input={listing}", config="explain"))
    out = tmp_path / "explain"
    with (out / "explain.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)  # the missing file is skipped with a warning
    assert len(list((out / "overlays").glob("*.png"))) == len(rows)
    fakes = [r for r in rows if "1" in r.parts]
    assert report["all"]["n"] == len(fakes) > 0
    saved = json.loads((out / "localization.json").read_text())
    assert {k: v["n"] for k, v in saved.items()} == {k: v["n"] for k, v in report.items()}
    scored = [t for t in table if t["parts"]]
    assert len(scored) == len(fakes)
    # The tiny model may see no evidence for "fake" in some images: their score is NaN (empty map).
    assert all(0 <= float(t["mass_inside"]) <= 1 or t["mass_inside"] == "nan" for t in scored)


def test_explain_runs_where_and_at_the_precision_the_model_records() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # An fp32 model stays fp32 on a GPU (no fp16 because CUDA is there); the GPU when there is one.
    assert inference_settings("32-true", "auto", cuda_available=True) == (cuda, None)
    assert inference_settings("32-true", "auto", cuda_available=False) == (cpu, None)
    assert inference_settings("32-true", "cpu", cuda_available=True) == (cpu, None)
    assert inference_settings("16-mixed", "auto", cuda_available=True) == (cuda, torch.float16)
    assert inference_settings("bf16-mixed", "cuda", cuda_available=True) == (cuda, torch.bfloat16)
    with pytest.raises(ConfigError, match="device=cuda"):
        inference_settings("32-true", "cuda", cuda_available=False)
    with pytest.raises(ConfigError, match="device='gpu' is not valid"):
        inference_settings("32-true", "gpu", cuda_available=True)


def test_checkpoints_record_their_inference_precision(trained) -> None:
    ckpt, _ = trained
    for path in (ckpt, ckpt.parent / "last.ckpt"):  # the best one (calibrated), and any other
        assert torch.load(path, map_location="cpu", weights_only=True)["ffd"]["precision"] == "32-true"
    model = FakeFaceClassifier.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, pretrained=False
    )
    assert model.inference_precision == "32-true"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["ffd"]["precision"] = "bf16-mixed"  # what a checkpoint records is what the model scores at
    model.on_load_checkpoint(raw)
    assert model.inference_precision == "bf16-mixed"


def test_eval_reports_localization(make_cfg, trained) -> None:
    from ffd.evaluation.evaluating import evaluate

    ckpt, _ = trained
    report = evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=0", "localization=hirescam", config="eval"))
    test = [r for r in read_manifest(ckpt.parent.parent / "manifest.csv") if r.split == "test"]
    assert report["localization"]["method"] == "hirescam"
    assert report["localization"]["parts"]["all"]["n"] == sum("1" in r.parts for r in test)
    assert set(report["localization"]["parts"]) <= {"all", "left_eye", "right_eye", "nose", "mouth"}


def test_gradcam_callback_logs_a_grid(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    cfg = make_cfg("+debug=fdr", f"data.root={tiny_synthetic}", "callbacks=gradcam", *TINY)
    train(cfg)
    from PIL import Image

    grid = Image.open(tmp_path / "train" / "gradcam.png")
    assert grid.width > 4 * 64  # four tiles a row
