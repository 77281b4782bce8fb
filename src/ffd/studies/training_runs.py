"""Training runs a study starts and reads: ``python -m ffd.train`` in a child process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ffd.errors import FfdError


def train_process(
    overrides: Sequence[str], run_dir: Path, log_file: Path, env: Mapping[str, str] | None = None
) -> tuple[float, float]:
    """``python -m ffd.train OVERRIDES hydra.run.dir=RUN_DIR``, its output into ``log_file``.

    Returns:
        Its wall seconds and its peak RSS in GiB (this child alone).

    Raises:
        FfdError: the run failed (the message ends with its log's last lines).
    """
    cmd = [sys.executable, "-m", "ffd.train", *overrides, f"hydra.run.dir={run_dir}"]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise FfdError(f"Training failed ({' '.join(cmd[1:])}); see {log_file}:\n{tail}")
    return wall, usage.ru_maxrss / 2**20


def best_checkpoint(run_dir: Path) -> Path:
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"), None)
    if ckpt is None:
        raise FfdError(f"{run_dir} has no checkpoints/epoch*.ckpt: pass a training run's folder.")
    return ckpt


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
