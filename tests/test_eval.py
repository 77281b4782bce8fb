"""ffd.eval: round trip with training, other data sets, outputs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ffd.errors import ConfigError, FfdError
from ffd.evaluation.evaluating import evaluate


def test_eval_reproduces_the_training_test_metrics(make_cfg, trained, tmp_path: Path) -> None:
    ckpt, metrics = trained
    report = evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=100", config="eval"))
    assert report["n"] == 24  # 30 % of 40 real + 40 fake
    # Training's test figures are the shipped model's, scored as eval scores: the same numbers.
    assert report["auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-9)
    assert report["eer"] == pytest.approx(metrics["test/eer"], abs=1e-9)
    assert report["at_chosen_threshold"]["acc"] == pytest.approx(metrics["test/acc"], abs=1e-9)
    assert report["at_0.5"]["acc"] == pytest.approx(metrics["test/acc_at_0.5"], abs=1e-9)
    calibration = report["calibration"]
    assert calibration["ece"] == pytest.approx(metrics["test/ece"], abs=1e-6)
    assert calibration["ece_uncalibrated"] == pytest.approx(metrics["test/ece_uncalibrated"], abs=1e-4)
    assert calibration["brier"] == pytest.approx(metrics["test/brier"], abs=1e-6)
    lo, hi = calibration["ece_ci95"]
    assert lo <= calibration["ece"] <= hi
    raw = torch.load(ckpt, weights_only=True)
    assert report["at_chosen_threshold"]["threshold"] == raw["ffd"]["threshold"] == metrics["val/threshold"]
    chosen = report["at_chosen_threshold"]["threshold_logit"]
    assert chosen == raw["ffd"]["threshold_logit"] == metrics["val/threshold_logit"]
    assert 0 < raw["ffd"]["threshold"] < 1 and raw["ffd"]["temperature"] == metrics["val/temperature"] > 0
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["n"] == 24
    assert "AUROC" in (out / "summary.md").read_text()
    assert len((out / "predictions.csv").read_text().splitlines()) == 25
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == [
        "confusion",
        "pr",
        "reliability",
        "roc",
        "scores",
    ]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert set(report["breakdowns"]) == {"difficulty", "part", "num_parts"}


def test_eval_on_another_data_set(make_cfg, trained, tiny_synthetic: Path) -> None:
    ckpt, _ = trained
    report = evaluate(
        make_cfg(f"ckpt_path={ckpt}", f"dataset={tiny_synthetic}", "bootstrap=0", config="eval")
    )
    assert report["n"] == 32 and "auroc_ci95" not in report  # every image of the other set


def test_eval_of_new_fakes_only(make_cfg, trained, tiny_synthetic: Path, tmp_path: Path) -> None:
    """ "What share of these new fakes does it catch?": a one-class set is scored, not refused."""
    ckpt, _ = trained
    fakes = sorted((tiny_synthetic / "real_and_fake_face" / "training_fake").iterdir())
    csv = tmp_path / "fakes.csv"
    csv.write_text("path,label\n" + "".join(f"{p},fake\n" for p in fakes))
    report = evaluate(make_cfg(f"ckpt_path={ckpt}", f"dataset={csv}", "bootstrap=50", config="eval"))
    assert report["n"] == report["n_fake"] == 16 and 0 <= report["at_chosen_threshold"]["recall"] <= 1
    assert sorted(p.stem for p in (tmp_path / "eval" / "figures").glob("*.png")) == ["confusion", "scores"]


def test_eval_will_not_resplit_another_data_set(make_cfg, trained, tiny_synthetic: Path) -> None:
    ckpt, _ = trained
    with pytest.raises(ConfigError, match="split=all"):
        evaluate(make_cfg(f"ckpt_path={ckpt}", f"dataset={tiny_synthetic}", "split=test", config="eval"))


def test_eval_refuses_what_is_not_an_ffd_checkpoint(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(FfdError, match="does not exist"):
        evaluate(make_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}", config="eval"))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(FfdError, match="not an ffd checkpoint"):
        evaluate(make_cfg(f"ckpt_path={other}", config="eval"))
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(FfdError, match="not a PyTorch checkpoint: it is truncated or another kind of file"):
        evaluate(make_cfg(f"ckpt_path={tmp_path / 'junk.ckpt'}", config="eval"))


def test_predictions_file_recomputes_the_metrics(make_cfg, trained, tmp_path: Path) -> None:
    """scikit-learn, from predictions.csv alone, gets eval's AUROC, AP and EER (interpolated crossing)."""
    ckpt, _ = trained
    report = evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=0", config="eval"))
    with (tmp_path / "eval" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["label"] == "fake" for r in rows], dtype=int)
    p = np.array([float(r["p_fake"]) for r in rows])
    assert report["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert report["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
    fpr, tpr, _ = roc_curve(y, p)
    gap = fpr - (1 - tpr)
    j = int(np.argmax(gap >= 0))
    w = -gap[j - 1] / (gap[j] - gap[j - 1])
    assert report["eer"] == pytest.approx((1 - w) * fpr[j - 1] + w * fpr[j], abs=1e-6)
    assert "bootstrap" not in (tmp_path / "eval" / "summary.md").read_text()  # bootstrap=0: no CI label
