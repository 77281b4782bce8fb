"""Reproducibility: deterministic runs repeat exactly, and a killed run resumes to the same result."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, group_alive, kill_group, start_train

from ffd.errors import ConfigError
from ffd.training.fitting import train
from ffd.training.resume import resolve_ckpt_path

# The backbone trains (dropout, BatchNorm, augmentation and shuffling all draw random numbers).
FULL = ["model.freeze=full", "model.dropout=0.2", "data.cache.mode=none", "trainer.deterministic=true",
        "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


def test_deterministic_runs_give_identical_metrics(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = make_cfg(f"data.root={tiny_synthetic}", *TINY, *FULL, "trainer.max_epochs=2")
        cfg.paths.output_dir = str(tmp_path / name)
        runs.append(train(cfg))
    assert runs[0] == runs[1]
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["deterministic"] is True and info["seed"] == 42
    assert (
        info["manifest_sha256"]
        == json.loads((tmp_path / "b" / "run_info.json").read_text())["manifest_sha256"]
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_synthetic: Path, tmp_path: Path) -> None:
    epochs = 8
    # Dropout, augmentation in two loader workers and the training order draw random numbers every
    # epoch, on three batches an epoch. The ImageNet trunk stays frozen: a random-init trunk that
    # trains on 22 images turns a last-bit difference between two processes (as a different thread
    # count gives) into a different run, where this one repeats to the bit.
    tiny = [o for o in TINY if not o.startswith(("data.loader.num_workers", "model.pretrained"))]
    frozen = [o.replace("=full", "=frozen") for o in FULL]
    loader = ["data.loader.num_workers=2", "data.loader.batch_size=8"]
    args = [f"data.root={tiny_synthetic}", *tiny, *frozen, "model.pretrained=true", *loader,
            f"trainer.max_epochs={epochs}"]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"

    proc = start_train([*args, f"hydra.run.dir={killed}"], tmp_path)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_group(proc)  # the run and its two loader workers: no clean-up, no final checkpoint
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while group_alive(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(proc), "a loader worker of the killed run is still alive"
    assert not (killed / "metrics.json").exists()
    done = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert done < epochs - 1, "the run finished before it was killed"

    resumed = start_train([*args, f"hydra.run.dir={killed}", "ckpt_path=last"], tmp_path)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert "Resuming from" in out
    uninterrupted = start_train([*args, f"hydra.run.dir={full}"], tmp_path)
    out = uninterrupted.communicate(timeout=600)[0]
    assert uninterrupted.returncode == 0, out[-3000:]

    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a.keys() == b.keys() and "test/auroc" in a
    assert b == pytest.approx(a, abs=1e-6)
    info = json.loads((killed / "run_info.json").read_text())
    (first,) = info["earlier_attempts"]  # the killed attempt's record, kept whole
    assert "ckpt_path=last" not in first["command"] and "ckpt_path=last" in info["command"]
    assert (killed / "csv" / "metrics.before_resume_1.csv").exists()  # the first attempt's curves stay


def test_ckpt_path_last_needs_a_run_folder(trained, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hydra.run.dir=outputs/train/<run> ckpt_path=last"):
        resolve_ckpt_path("last", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(trained[0], tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(str(tmp_path), "/elsewhere") == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)
