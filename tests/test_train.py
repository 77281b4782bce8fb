from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LIMITS, TINY, run_train

from ffd.data.records import read_manifest
from ffd.training.fitting import train


def test_fast_dev_run(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    cfg = make_cfg("+debug=fdr", f"data.root={tiny_synthetic}", *TINY)
    metrics = train(cfg)
    assert {"last_epoch/train/loss", "test/acc", "test/auroc", "val/temperature"} <= set(metrics)
    run = tmp_path / "train"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    rows = read_manifest(run / "manifest.csv")
    assert len(rows) == 32 and {r.split for r in rows} == {"train", "val", "test"}


@pytest.mark.slow
def test_short_run_learns_the_synthetic_set(make_cfg, tmp_path: Path) -> None:
    """The seed recipe (pretrained, frozen, flatten head, feature cache) at 160 px on 400 images.

    A broken pipeline (labels lost, backbone not loaded, head not trained, splits
    mixed up) scores ~0.5 here; the working one ~0.8 AUROC on its 120 test images
    (standard error ~0.04).
    """
    cfg = make_cfg(
        "+experiment=demo",
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.num_real=200",
        "data.synthetic.num_fake=200",
        "data.split.test_fraction=0.3",
        "model.input_size=160",
        "trainer.max_epochs=8",
        "trainer.accelerator=cpu",
        "callbacks.progress_bar.refresh_rate=0",
    )
    metrics = train(cfg)
    assert metrics["test/auroc"] > 0.7, metrics
    assert metrics["test/acc"] > 0.6, metrics
    run = tmp_path / "train"
    assert (run / "curves.png").stat().st_size > 10_000
    assert list((run / "checkpoints").glob("epoch*.ckpt")) and (run / "checkpoints" / "last.ckpt").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/auroc" in (run / "csv" / "metrics.csv").read_text()


@pytest.mark.slow
def test_multirun_sweep_gives_each_run_its_folder(tiny_synthetic: Path, tmp_path: Path) -> None:
    result = run_train(
        "-m",
        "+debug=fdr",
        f"data.root={tiny_synthetic}",
        *TINY,
        "model.optimizer.lr=1e-3,1e-4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multirun").iterdir())
    assert len(sweeps) == 1
    runs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    for run, lr in zip(runs, ("0.001", "0.0001"), strict=True):
        assert (run / "metrics.json").exists() and (run / "manifest.csv").exists()
        assert f"lr={lr}" in (run / ".hydra" / "overrides.yaml").read_text().replace(" ", "").replace("-", "")
        assert len(json.loads((run / "run_info.json").read_text())["manifest_sha256"]) == 64
    # One table of every run's metrics in the sweep folder.
    table = (sweeps[0] / "summary.csv").read_text().splitlines()
    assert table[0].startswith("run,overrides,status") and "test/auroc" in table[0]
    assert [line.split(",")[:3] for line in table[1:]] == [
        ["0", "model.optimizer.lr=0.001", "done"],
        ["1", "model.optimizer.lr=0.0001", "done"],
    ]
    assert (sweeps[0] / "summary.md").exists()


def test_missing_data_fails_at_once_with_a_clear_message(tmp_path: Path) -> None:
    result = run_train("+experiment=seed", f"paths.data_dir={tmp_path / 'nowhere'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "does not exist" in output and "training_real" in output and "ffd data +experiment=seed" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("value", ["0", "1"])
def test_allocator_tuning_can_be_turned_off(value: str, tmp_path: Path) -> None:
    code = "from ffd.runtime import tune_malloc; print(tune_malloc())"
    env = {**os.environ, "FFD_TUNE_MALLOC": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ("True" if value == "1" else "False")


def test_a_run_prints_no_noise(trained_run) -> None:
    """The shared run's command line: no Lightning tips or known-harmless warnings; in a log, one line
    per epoch instead of bars."""
    output = trained_run.output
    assert "Final metrics" in output
    # Not on a terminal: one line per epoch from the progress bar, no carriage-return updates.
    assert all(f"Epoch {e}/3: val/loss=" in output for e in (1, 2, 3)) and "\r" not in output
    for noise in ("Tip:", "Warning", "warn(", "`Trainer.fit` stopped", "LeafSpec", "No positive samples"):
        assert noise not in output, noise


def test_tensorboard_curves_by_epoch_and_hparams_with_shipped_metrics(trained_run) -> None:
    """The run's TensorBoard events: per-epoch curves with the epoch as x-axis, and an HPARAMS entry (the
    run's settings with the shipped model's figures) that a sweep's runs are compared by."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = trained_run.ckpt.parents[1]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/auroc")] == [0, 1, 2]  # 3 epochs, whatever the batch count
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2]
    assert events.Scalars("test/auroc")[-1].value == pytest.approx(trained_run.metrics["test/auroc"])
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    settings = start.session_start_info.hparams
    assert settings["model/backbone"].string_value == "mobilenet_v2" and settings["views"].number_value == 4
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    shipped = {m.name.tag for m in experiment.metric_infos}
    assert {
        "shipped/test/auroc",
        "shipped/val/auroc",
        "shipped/test/tpr_at_fpr_1",
        "shipped/test/ece",
    } <= shipped
    assert events.Scalars("shipped/val/auroc")[0].value == pytest.approx(trained_run.metrics["val/auroc"])


def test_the_monitor_is_the_shipped_val_auroc_where_softmax_saturates(make_cfg, tmp_path: Path) -> None:
    """A deliberately overconfident head (its weights x300 as training starts) gives logits in the
    hundreds, where fp32 softmax gives most images p_fake of exactly 0 or 1 and an AUROC of those ties
    them. The checkpoint monitor ranks logits of the pixels the shipped model sees: it equals the
    shipped model's val AUROC within one (real, fake) pair (the fit's val runs on float16-stored
    features; fp32 training, as on a CPU without fast bf16), and the checkpoint is named by it."""
    from torchmetrics.functional.classification import binary_auroc

    from ffd.data.decoding import Decoder
    from ffd.engine.scorers import load_scorer
    from ffd.training.calibrating import scored_logits

    cfg = make_cfg(
        "+experiment=demo", f"data.root={tmp_path / 'synthetic'}", "data.synthetic.num_real=40",
        "data.synthetic.num_fake=40", "data.split.val_fraction=0.3", "data.split.test_fraction=0.3",
        "model.input_size=64", "trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "callbacks.progress_bar.refresh_rate=0", "bootstrap=0",
        "+callbacks.overconfident._target_=conftest.OverconfidentHead", "+callbacks.overconfident.factor=300",
    )  # fmt: skip
    metrics = train(cfg)
    run = tmp_path / "train"
    val = [r for r in read_manifest(run / "manifest.csv") if r.ok and r.split == "val"]
    labels = torch.tensor([r.label for r in val])
    pair = 1 / (int((labels == 0).sum()) * int((labels == 1).sum()))
    assert abs(metrics["val/auroc_best"] - metrics["val/auroc"]) <= pair + 1e-6, metrics
    (ckpt,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert f"auroc{metrics['val/auroc_best']:.4f}" in ckpt.name
    scorer = load_scorer(ckpt, "torch", None)
    p_fake = scored_logits(scorer, val, 16, Decoder(64, LIMITS)).softmax(-1)[:, 1]  # as the monitor was
    assert int(((p_fake == 0) | (p_fake == 1)).sum()) >= len(val) // 2  # saturated
    assert float(binary_auroc(p_fake, labels)) != pytest.approx(metrics["val/auroc"], abs=1e-6)  # ties
