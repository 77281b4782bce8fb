"""The GPU check's script runs end to end; on a machine without a GPU, as its dry run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_writes_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry"] is not torch.cuda.is_available()
    assert report["facts"]["torch"] == torch.__version__ and report["facts"]["cores"] == os.cpu_count()
    fast, naive = report["fast"], report["naive"]
    assert fast["wall_s"] > 0 and 0 < naive["measured_wall_s"] <= naive["wall_s"]
    assert report["speedup"] == pytest.approx(naive["wall_s"] / fast["wall_s"], abs=0.01)
    assert (
        report["export_parity"]["label_flips"] == 0
        and max(report["export_parity"]["max_abs_diff"].values()) < 1e-4
    )
    assert report["predict"]["predict_checkpoint_img_per_s"] > 0 and report["decode"]["images"] > 0
    assert not list(tmp_path.glob("outputs")) and not (ROOT / "outputs" / "gpu_check").exists()
