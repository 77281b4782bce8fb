"""DDP on CPU (gloo): two processes train and evaluate like one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_train

# 16 train, 8 val, 8 test images: even splits, so DDP's sampler pads nothing. With no
# augmentation, no dropout and one batch per rank, two ranks of 8 average to exactly the
# gradient of one batch of 16: the runs differ only in float summation order.
ARGS = [*TINY, "data.split.val_fraction=0.25", "data.split.test_fraction=0.25", "data.augment.hflip=0",
        "data.augment.vflip=0", "data.augment.rotation=0", "trainer.precision=32-true",
        "trainer.max_epochs=3", "model.optimizer.lr=1e-2",
        "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


def run(args: list[str], cwd: Path) -> None:
    result = run_train(*args, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_synthetic: Path, tmp_path: Path) -> None:
    common = [f"data.root={tiny_synthetic}", *ARGS]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # DDP first: rank 0 builds the feature cache while rank 1 waits for it.
    run([*common, "trainer=ddp", "trainer.devices=2", "data.batch_size=8", f"hydra.run.dir={ddp}"], tmp_path)
    run([*common, "data.batch_size=16", f"hydra.run.dir={single}"], tmp_path)

    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert a.keys() == b.keys() and {"test/auroc", "val/auroc_best", "val/threshold"} <= a.keys()
    assert b == pytest.approx(a, abs=1e-4)
    info = json.loads((ddp / "run_info.json").read_text())
    assert info["world_size"] == 2
    # One feature cache, built once; rank 1 read it.
    assert len(list((tmp_path / "data" / "cache").glob("features-*/meta.json"))) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir() if p.name.startswith("epoch")) == sorted(
        p.name for p in (single / "checkpoints").iterdir() if p.name.startswith("epoch")
    )


@pytest.mark.slow
def test_local_ddp_inside_a_sweep_is_refused(tiny_synthetic: Path, tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("SLURM_PROCID", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
    }
    result = subprocess.run(
        [sys.executable, "-m", "ffd.train", "-m", f"data.root={tiny_synthetic}", *TINY, "trainer=ddp",
         "trainer.devices=2", "model.optimizer.lr=1e-3,1e-4"],
        cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "submitit_slurm" in output and "Traceback" not in output
    assert not list((tmp_path / "outputs").glob("**/metrics.json"))
