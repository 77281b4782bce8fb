"""model.abstain: a band of logits around the threshold where predict answers "uncertain"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from ffd.data.facts import UNCERTAIN, label_name
from ffd.data.records import read_manifest
from ffd.errors import ConfigError
from ffd.metrics.selective import answered, check_abstain, choose_band, risk_coverage, selective_scores


def scores(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    return (labels * 2.0 - 1) + torch.randn(n, generator=g) * 1.5, labels  # overlapping classes


def test_a_coverage_target_answers_that_share_with_the_narrowest_band() -> None:
    logits, labels = scores()
    band = choose_band(logits, labels, 0.0, {"coverage": 0.8})
    kept = answered(logits, band)
    assert band["met"] and 0.8 <= float(kept.float().mean()) < 0.8 + 2 / len(logits)
    assert band["low"] == -band["high"] and band["low_p_fake"] < 0.5 < band["high_p_fake"]
    assert (
        not answered(logits, {**band, "low": band["low"] - 1e-6, "high": band["high"] + 1e-6}).float().mean()
        >= 0.8
    )


def test_a_risk_target_holds_among_the_answered_and_an_unmet_one_answers_nothing() -> None:
    logits, labels = scores()
    wrong = ((logits >= 0).long() != labels).float()
    band = choose_band(logits, labels, 0.0, {"risk": 0.05})
    kept = answered(logits, band)
    assert band["met"] and float(wrong[kept].mean()) <= 0.05 < float(wrong.mean())
    assert 0.1 < float(kept.float().mean()) < 1  # it abstains on some, answers others
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    hopeless = choose_band(logits, 1 - labels, 0.0, {"risk": 0.001})  # every confident answer is wrong
    assert not hopeless["met"] and not answered(logits, hopeless).any()
    assert choose_band(logits, shuffled, 0.0, {"coverage": 0.5})["met"]


def test_selective_scores_and_curve() -> None:
    logits, labels = scores()
    band = choose_band(logits, labels, 0.0, {"coverage": 0.6})
    s = selective_scores(logits, labels, 0.0, band, n_boot=300, seed=0)
    assert s["answered"] + s["uncertain"] == len(labels) and s["selective_risk"] < s["risk_at_full_coverage"]
    for key in ("coverage", "selective_risk"):
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi
    coverage, risk = risk_coverage(logits, labels, 0.0)
    assert coverage[-1] == 1 and risk[-1] == pytest.approx(s["risk_at_full_coverage"])
    assert risk[len(risk) // 5] < risk[-1]  # the confident fifth errs less than all


def test_labels_and_settings() -> None:
    band = {"low": -1.0, "high": 2.0}
    assert [label_name(x, 0.5, band) for x in (-1.0, 0.0, 1.9, 2.0)] == ["real", UNCERTAIN, UNCERTAIN, "fake"]
    check_abstain(None)
    check_abstain({"risk": 0.05})
    for bad in ({"risk": 5}, {"coverage": 0}, {"risk": 0.1, "coverage": 0.9}, {"accuracy": 0.9}, "0.9"):
        with pytest.raises(ConfigError, match="model.abstain"):
            check_abstain(bad)  # type: ignore[arg-type]


def test_train_predict_eval_with_an_uncertain_band(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    """Chosen on val after training, kept in the checkpoint: predict answers uncertain inside it, eval
    reports coverage and risk with intervals and the risk-coverage curve."""
    from ffd.deploy.predicting import predict_files
    from ffd.evaluation.evaluating import evaluate
    from ffd.training.fitting import train

    cfg = make_cfg(f"data.root={tiny_synthetic}", *TINY, "trainer.max_epochs=1", "runtime=torch",
                   "model.abstain={coverage: 0.5}", "data.split.val_fraction=0.3",
                   "data.split.test_fraction=0.3")  # fmt: skip
    metrics = train(cfg)
    assert 0.5 <= metrics["val/coverage"] < 1 and "test/selective_risk" in metrics
    (ckpt,) = (tmp_path / "train" / "checkpoints").glob("epoch*.ckpt")
    band = torch.load(ckpt, weights_only=True)["ffd"]["abstain"]
    assert band["target"] == "coverage" and band["low"] < band["high"]
    files = [r.path for r in read_manifest(tmp_path / "train" / "manifest.csv") if r.ok]
    (tmp_path / "all.txt").write_text("\n".join(files))
    out = tmp_path / "preds.jsonl"
    counts = predict_files(make_cfg(f"ckpt_path={ckpt}", f"input={tmp_path / 'all.txt'}", f"output={out}",
                                    "runtime=torch", config="predict"))  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    uncertain = [r for r in rows if r["label"] == UNCERTAIN]
    assert counts[UNCERTAIN] == len(uncertain) > 0 and all(
        band["low"] < r["logit"] < band["high"] for r in uncertain
    )
    report = evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=200", "runtime=torch", config="eval"))
    lo, hi = report["abstain"]["coverage_ci95"]
    assert lo <= report["abstain"]["coverage"] <= hi and report["abstain"]["target"] == "coverage"
    assert (tmp_path / "eval" / "figures" / "risk_coverage.png").exists()
    assert "Uncertain answers" in (tmp_path / "eval" / "summary.md").read_text()
