"""SLURM through hydra-submitit-launcher: a preempted job is requeued and continues from its last.ckpt."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from conftest import TINY

from ffd.config import compose_config
from ffd.training import slurm


class PreemptOnce(L.Callback):
    """Send this process the signal SLURM sends a preempted submitit job, once, when the second
    epoch starts (``last.ckpt`` holds the first). Loaded by the job from this file (PYTHONPATH)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGUSR2)


def epochs(metrics_csv: Path) -> list[int]:
    with metrics_csv.open() as fh:  # the epoch as logged: "0.0"
        return sorted({int(float(row["epoch"])) for row in csv.DictReader(fh) if row.get("val/auroc")})


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_from_last_ckpt(tiny_synthetic: Path, tmp_path: Path) -> None:
    sweep, marker = tmp_path / "sweep", tmp_path / "preempted"
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    # submitit's local executor: the SLURM launcher's signal handling and requeue, on this machine.
    result = subprocess.run(
        [sys.executable, "-m", "ffd.train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
         f"data.root={tiny_synthetic}", *TINY, "trainer.max_epochs=3", "seed=1",
         "callbacks.progress_bar.refresh_rate=0", "+callbacks.preempt._target_=test_slurm.PreemptOnce",
         # Known problem: with OpenVINO running the trunk (auto's choice on a CPU with AVX512-BF16)
         # the preempted local job ends without being requeued; its signal handler is still
         # installed when the signal comes (cause not found yet). This test pins onnxruntime.
         f"+callbacks.preempt.marker={marker}", "runtime=onnxruntime"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    logs = "\n".join(p.read_text() for p in sweep.glob(".submitit/*/*.out"))
    assert result.returncode == 0, (result.stdout + result.stderr + logs)[-5000:]
    assert marker.exists() and "this job is preempted" in logs  # submitit caught the signal
    run = sweep / "0"
    assert "continues its run from last.ckpt" in logs and "Resuming from" in logs
    # The same run folder: the first attempt's epoch kept beside the resumed epochs.
    assert epochs(run / "csv" / "metrics.before_resume_1.csv") == [0]
    assert epochs(run / "csv" / "metrics.csv") == [1, 2]
    assert len(json.loads((run / "run_info.json").read_text())["earlier_attempts"]) == 1
    assert "test/auroc" in json.loads((run / "metrics.json").read_text())


def test_slurm_launcher_config_requeues_timed_out_jobs() -> None:
    cfg = compose_config("train", ["hydra/launcher=slurm"], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0


def test_only_an_earlier_attempt_of_the_same_job_is_continued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert slurm.start_attempt(run) is None and not run.exists()  # no submitit job: nothing recorded
    monkeypatch.setattr(slurm, "submitit_job_id", lambda: "17_0")
    assert slurm.start_attempt(run) is None  # the first attempt
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").touch()
    assert slurm.start_attempt(run) == "unfinished"  # requeued: continue from last.ckpt
    (run / "metrics.json").write_text('{"val/auroc_best": 0.75}')
    assert slurm.start_attempt(run) == "finished"
    assert slurm.finished_metrics(run) == {"val/auroc_best": 0.75}
    monkeypatch.setattr(slurm, "submitit_job_id", lambda: "18_0")  # another job in a reused folder
    assert slurm.start_attempt(run) is None
