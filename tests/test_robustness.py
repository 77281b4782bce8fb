"""Does it hold up: perturbations, the robustness sweep, operating points, manipulation methods, the
generalization matrix and report.html (rendered in headless Chromium)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LIMITS, TINY, chromium, compose_run, run_train
from PIL import Image
from sklearn.metrics import roc_curve

from ffd.config import compose_config
from ffd.data.decoding import pixels
from ffd.data.facts import PART_BOXES
from ffd.data.io import decode_rgb, read_file
from ffd.data.perturbations import OPS, op, severity_name
from ffd.data.synthetic import METHODS, draw_face, manipulate
from ffd.data.transforms import view_transform
from ffd.engine.scorers import CheckpointScorer, load_scorer
from ffd.errors import ConfigError
from ffd.evaluation.evaluating import evaluate
from ffd.metrics.scores import tpr_at_fpr

SMALL_SWEEP = [
    "robustness=default", "robustness.bootstrap=20",
    "+robustness.families={jpeg: {op: jpeg, severities: [90, 30]}, blur: {op: blur, severities: [0, 3]}}",
]  # fmt: skip


def jpeg_bytes(seed: int = 0, size: int = 96) -> tuple[torch.Tensor, bytes]:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return torch.from_numpy(np.asarray(decoded).copy()).permute(2, 0, 1), buf.getvalue()


def test_perturbations_keep_the_format_and_grow_with_severity() -> None:
    x, data = jpeg_bytes()
    for name, values in [
        ("jpeg", [95, 30]),
        ("rescale", [0.75, 0.25]),
        ("blur", [1, 3]),
        ("noise", [0.02, 0.1]),
    ]:
        outs = [op(name)(x, v, data) for v in values]
        assert all(o.dtype == torch.uint8 and o.shape == x.shape for o in outs), name
        changes = [float((o.float() - x.float()).abs().mean()) for o in outs]
        assert 0 < changes[0] < changes[1], (name, changes)
    assert torch.equal(op("rescale")(x, 1.0, data), x) and torch.equal(op("blur")(x, 0, data), x)
    assert op("redecode")(x, "crop_1px", data).shape == (3, 94, 94)
    resaved = op("redecode")(x, "resave_95", data)
    assert resaved.shape == x.shape and 0 < float((resaved.float() - x.float()).abs().mean()) < 3
    social = op("chain")(x, [["resize_long", 48], ["jpeg", 75]], data)
    assert social.shape == (3, 48, 48)
    assert severity_name([["resize_long", 512], ["jpeg", 75]]) == "resize_long 512 + jpeg 75"
    with pytest.raises(ConfigError, match="Unknown perturbation op 'sharpen'"):
        op("sharpen")
    assert set(OPS) >= {"jpeg", "rescale", "blur", "noise", "redecode", "chain"}


def test_tpr_at_fpr_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (300,), generator=g)
    probs = (labels * 0.3 + torch.rand(300, generator=g) * 0.8).clamp(0, 1)
    fpr, tpr, _ = roc_curve(labels.numpy(), probs.numpy())
    for target in (0.01, 0.05, 0.1):
        assert tpr_at_fpr(probs, labels, target) == pytest.approx(float(tpr[fpr <= target].max()))


def test_sweep_scores_each_perturbed_image_once(trained, tmp_path: Path, monkeypatch) -> None:
    ckpt, _ = trained
    calls: list[int] = []
    original = CheckpointScorer.logit
    monkeypatch.setattr(CheckpointScorer, "logit", lambda self, x: calls.append(len(x)) or original(self, x))
    cfg = compose_run(
        "eval",
        [f"ckpt_path={ckpt}", "bootstrap=50", "runtime=torch", *SMALL_SWEEP],
        tmp_path,
        tmp_path / "eval",
    )
    cfg.robustness.families = {k: v for k, v in cfg.robustness.families.items() if k in ("jpeg", "blur")}
    report = evaluate(cfg)
    result = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    n = report["n"]
    assert result["images_scored"] == 4 * n and sum(calls) == n + 4 * n  # clean once, each condition once
    assert [r["severity"] for r in result["families"]["jpeg"]] == ["90", "30"]
    strong, none = result["families"]["blur"][1], result["families"]["blur"][0]
    assert 0 <= strong["flip_rate"] <= 1
    # Blur 0 is the image as decoded at full size: its flips are those of the full decode against
    # eval's (draft-decoded) clean scores, image by image.
    clean = {
        r["path"]: float(r["logit"]) for r in csv.DictReader((tmp_path / "eval" / "predictions.csv").open())
    }
    scorer = load_scorer(ckpt, "torch", None)
    full = [pixels(decode_rgb(read_file(p), None, LIMITS))[None] for p in clean]
    threshold = scorer.threshold_logit
    flips = [
        (float(scorer.logit(x)[0]) >= threshold) != (c >= threshold)
        for x, c in zip(full, clean.values(), strict=True)
    ]
    assert none["flip_rate"] == pytest.approx(sum(flips) / len(flips))
    for row in (*result["families"]["jpeg"], *result["families"]["blur"]):
        lo, hi = row["auroc_ci95"]
        assert lo <= row["auroc"] <= hi and {"ap", "eer", "tpr_at_fpr_1", "acc", "ece"} <= row.keys()
    assert result["clean"]["auroc"] == pytest.approx(report["auroc"])
    assert (tmp_path / "eval" / "figures" / "robustness_blur.png").exists()
    assert "| blur | 3 |" in (tmp_path / "eval" / "robustness.md").read_text()
    assert report["tpr_at_fpr_1"] <= report["tpr_at_fpr_5"] <= report["tpr_at_fpr_10"]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 7 and 'src="figures/' not in html
    assert f"{report['auroc']:.4f}" in html


def test_manipulation_methods_change_only_the_face() -> None:
    rng = np.random.default_rng(3)
    target, donor = draw_face(rng), draw_face(rng)
    base = np.asarray(target, dtype=np.float32)
    x0, y0, x1, y1 = PART_BOXES["nose"]
    for method in METHODS:
        fake = np.asarray(manipulate(target, donor, "0010", "mid", method), dtype=np.float32)
        diff = np.abs(fake - base).mean(-1)
        assert diff[y0:y1, x0:x1].mean() > 1, method  # the nose changed
        assert diff[:60].mean() < 1e-3 and diff[:, :60].mean() < 1e-3, method  # the background did not


def test_forensic_views_recompress_and_blur() -> None:
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3}
    x, _ = jpeg_bytes(size=64)
    plain = view_transform(preprocess, {"hflip": 0.0})(x)
    hardened = view_transform(preprocess, {"jpeg": 1.0, "blur": 1.0})(x)
    assert plain.shape == hardened.shape and float((plain - hardened).abs().mean()) > 0.01
    cfg = compose_config("train", ["+experiment=[demo,forensic]"])
    assert cfg.data.augment.jpeg == 0.5 and cfg.data.augment.blur == 0.5 and cfg.trainer.max_epochs == 20


@pytest.mark.slow
def test_report_renders_in_a_browser(trained, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ckpt, _ = trained
    out = tmp_path / "eval"
    result = run_train(f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "bootstrap=50", *SMALL_SWEEP,
                       cwd=tmp_path, module="ffd.eval")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / "report.html").as_uri())
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth])"
        )
        rows = page.eval_on_selector_all(
            "#metrics tr[data-key]", "els => els.map(e => [e.dataset.key, e.cells[1].innerText])"
        )
        browser.close()
    assert len(images) >= 8 and all(width > 0 for _, width in images), images
    assert {alt for alt, _ in images} >= {"roc", "pr", "confusion", "reliability", "robustness jpeg"}
    shown = dict(rows)
    assert (
        shown["auroc"] == f"{metrics['auroc']:.4f}"
        and shown["tpr_at_fpr_1"] == f"{metrics['tpr_at_fpr_1']:.4f}"
    )
    assert shown["calibration.ece"] == f"{metrics['calibration']['ece']:.4f}"
    assert shown["at_chosen_threshold.acc"] == f"{metrics['at_chosen_threshold']['acc']:.4f}"


@pytest.mark.slow
def test_cross_method_matrix(tmp_path: Path) -> None:
    tiny = [o for o in TINY if not o.startswith("data=")]  # these sets are synthetic ones
    small = [*tiny, "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0", "data=synthetic",
             "data.synthetic.num_real=16", "data.synthetic.num_fake=16"]  # fmt: skip
    recipes = "+recipes={tiny: [" + ", ".join(f"'{o}'" for o in small) + "]}"
    datasets = ", ".join(
        f"{m}: ['data.synthetic.method={m}', 'data.root={tmp_path}/data/{m}']"
        for m in ("box", "poisson", "face")
    )
    result = run_train("~recipes", "~datasets", recipes, f"+datasets={{{datasets}}}", "bootstrap=20",
                       f"hydra.run.dir={tmp_path / 'matrix'}", cwd=tmp_path, module="ffd.matrix")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    matrix = json.loads((tmp_path / "matrix" / "matrix.json").read_text())
    assert list(matrix["cells"]) == ["tiny/box", "tiny/poisson", "tiny/face"]
    for row in matrix["cells"].values():
        assert list(row) == ["box", "poisson", "face"]
        assert all(0 <= c["auroc"] <= 1 and c["overlap_with_training"] == 0 for c in row.values())
    csv_rows = (tmp_path / "matrix" / "matrix.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 9 and (tmp_path / "matrix" / "matrix.png").stat().st_size > 1000
    again = run_train("~recipes", "~datasets", recipes, f"+datasets={{{datasets}}}", "bootstrap=20",
                      f"hydra.run.dir={tmp_path / 'matrix'}", cwd=tmp_path, module="ffd.matrix")  # fmt: skip
    assert again.returncode == 0 and again.stdout.count("reusing") == 3  # trained runs are reused
