"""Sweeps: an Optuna study that is killed and continues, the sweep summary, SLURM launching."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY, kill_group, start_train
from optuna.trial import TrialState

from ffd.config import compose_config
from ffd.training.sweeps import run_folders, summarize


@pytest.mark.slow
def test_optuna_study_killed_and_resumed(tiny_synthetic: Path, tmp_path: Path) -> None:
    args = ["hparams_search=optuna", "trials=3", "hydra.sweeper.study_name=s", f"data.root={tiny_synthetic}",
            *TINY, "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip
    study_dir = tmp_path / "outputs" / "train" / "optuna" / "s"
    storage = f"sqlite:///{study_dir / 'optuna.db'}"

    first = start_train(args, tmp_path)
    deadline = time.monotonic() + 300
    while not list(study_dir.glob("*/1")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_group(first)  # during the second trial
    [started] = [p for p in study_dir.iterdir() if p.is_dir()]
    done_before = (started / "0" / "metrics.json").read_text()
    assert not (started / "1" / "metrics.json").exists()

    time.sleep(1.1)  # a new start time (folder names have seconds)
    second = start_train(args, tmp_path)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out[-3000:]
    assert "1 of 3 trials done, 2 to run" in out

    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    complete = [t.params for t in study.trials if t.state == TrialState.COMPLETE]
    assert len({json.dumps(p, sort_keys=True) for p in complete}) == 3  # a rerun draws new parameters
    # Nothing was overwritten: the first invocation's runs are as they were.
    runs = [p.relative_to(study_dir).as_posix() for p in run_folders(study_dir)]
    assert len(runs) == 4 and runs[:2] == [f"{started.name}/0", f"{started.name}/1"]
    assert (started / "0" / "metrics.json").read_text() == done_before
    rows = summarize(study_dir)
    assert [r["status"] for r in rows] == ["done", "incomplete", "done", "done"]
    assert "val/auroc_best" in (study_dir / "summary.csv").read_text()
    assert (study_dir / "optimization_results.yaml").exists()


def test_slurm_launcher_composes_with_a_sweep() -> None:
    overrides = [
        "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.devices=4", "hparams_search=optuna",
    ]  # fmt: skip
    cfg = compose_config("train", overrides, with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == launcher.tasks_per_node == 4
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.trainer.strategy == "ddp"
    assert "sweep_summary" in cfg.hydra.callbacks
