"""Shared fixtures: tiny synthetic data sets and composed configs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import lightning as L
import numpy as np
import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from PIL import Image

from ffd.config import CONF_MODULE, compose_config, register_resolvers
from ffd.data.settings import Limits
from ffd.data.synthetic import ensure_synthetic
from ffd.engine.scorers import at_once
from ffd.errors import FfdError
from ffd.models.module import FakeFaceClassifier

register_resolvers()

if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # Each pytest-xdist worker its share of the cores, for its own torch and the programs it starts.
    THREADS = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

# Overrides for a tiny, fast training run on a given folder (random-init backbone, 64 px).
TINY = [
    "data=ciplab",
    "model.pretrained=false",
    "model.input_size=64",
    "data.loader.num_workers=0",
    "trainer.accelerator=cpu",
]


# What an input may be, as every task's config sets it (conf/common.yaml).
LIMITS = Limits.from_config(compose_config("train").limits)


def split_settings(**overrides: float) -> dict:
    """``build_manifest``'s split arguments as conf/data/ciplab.yaml sets them, and the limits, with
    overrides."""
    return {**compose_config("train").data.split, "limits": LIMITS, **overrides}


def build(node: DictConfig, **kwargs):
    """``instantiate``, raising the FfdError a user would see rather than Hydra's wrapper of it."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, FfdError):
            raise err.__cause__ from None
        raise


def build_model(*overrides: str, **kwargs) -> FakeFaceClassifier:
    """The model conf/model/ builds (with Hydra overrides such as ``model.head=avgpool``)."""
    return build(compose_config("train", list(overrides)).model, **kwargs)


def tiny_model(**kwargs) -> FakeFaceClassifier:
    """The seed model, random-init at 64 px (keyword arguments replace settings)."""
    return build_model(**{"pretrained": False, "input_size": 64, **kwargs})


def build_datamodule(root: Path, model: FakeFaceClassifier, *overrides: str, **kwargs):
    """conf/data/ciplab.yaml's data module on ``root`` for ``model`` (with the feature cache of a frozen
    backbone, as training builds it), without a run folder or loader workers; ``overrides`` are
    Hydra's (``data.cache.mode=none``), keyword arguments replace settings."""
    from ffd.engine.feature_cache import FeatureCache

    cfg = compose_config(
        "train", ["data=ciplab", "data.loader.num_workers=0", "data.manifest_path=null", *overrides]
    )
    cache, encoder = build(cfg.data.cache), model.encoder()
    features = FeatureCache(encoder, cache) if encoder is not None else None
    settings = {"root": str(root), "preprocess": model.preprocess, "cache": cache, "features": features,
                "limits": LIMITS}  # fmt: skip
    return build(cfg.data, **{**settings, **kwargs})


_STARTED: list[subprocess.Popen] = []  # every child a test started: killed, with its group, at the end


def start_train(args: list[str], cwd: Path, module: str = "ffd.train") -> subprocess.Popen:
    """``python -m ffd.train ARGS`` as a child process in its own process group, stdout and stderr
    together. Its loader workers and other children share the group: ``kill_group`` ends them all."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    _STARTED.append(proc)
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (the child, its loader workers, anything they started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        proc.wait()


def group_alive(proc: subprocess.Popen) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_train(*args: str, cwd: Path, module: str = "ffd.train") -> subprocess.CompletedProcess:
    """``python -m ffd.train ARGS`` to the end (10 minutes at most), stdout and stderr together."""
    proc = start_train(list(args), cwd, module)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_group(proc)  # what it left behind, if anything
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="session", autouse=True)
def nothing_outlives_the_suite():
    """Whatever a test started (and whatever that started) ends with the suite."""
    yield
    for proc in _STARTED:
        kill_group(proc)


def chromium() -> str:
    """Debian's chromium, for the browser tests (Playwright drives it through executable_path)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "The browser tests need Debian's chromium: make browser (apt-get install chromium)."
    return found


def write_jpegs(folder: Path, names: list[str], seed: int = 0, size: int = 48) -> list[Path]:
    """Write small JPEGs with distinct random content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(str(folder).encode())])
    paths = []
    for name in names:
        p = folder / name
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p, "JPEG")
        paths.append(p)
    return paths


@contextlib.contextmanager
def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder every test process of this run shares (pytest-xdist's workers too), held under a lock:
    (the folder, whether an earlier holder made its contents). Made means the block ended without an
    error."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, done = base / name, base / f"{name}.done"
    with FileLock(base / f"{name}.lock"):
        folder.mkdir(exist_ok=True)
        yield folder, done.exists()
        done.touch()


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 real + 16 fake synthetic CIPLAB set (shared, read-only)."""
    with once_per_run(tmp_path_factory, "synthetic") as (out, made):
        if not made:
            ensure_synthetic(out, num_real=16, num_fake=16, seed=1, method="mixed")
    return out


def compose_run(config: str, overrides: list[str], root: Path, output_dir: Path) -> DictConfig:
    """conf/<config>.yaml with overrides, as `python -m ffd.<config>` would run, writing into output_dir."""
    with initialize_config_module(CONF_MODULE, version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(root), str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/<config>.yaml with overrides, writing into tmp_path/<config>."""

    (tmp_path / "data" / "ciplab").mkdir(parents=True)  # the default data folder exists

    def _make(*overrides: str, config: str = "train") -> DictConfig:
        return compose_run(config, list(overrides), tmp_path, tmp_path / config)

    return _make


class TrainedRun(NamedTuple):
    ckpt: Path  # the best checkpoint
    metrics: dict  # the run's metrics.json
    output: str  # what the command printed (stdout and stderr)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny pretrained run through the command line (``python -m ffd.train``, as a user runs it:
    40 real + 40 fake synthetic images, 64 px, 3 epochs), shared by every round trip.

    With the default 15 % val (12 images) calibration fitted temperatures in the hundreds: every p_fake
    ~0.5, too alike to compare paths on."""
    with once_per_run(tmp_path_factory, "trained") as (root, made):
        if not made:
            result = run_train(
                "+experiment=demo", f"data.root={root / 'synthetic'}", "data.synthetic.num_real=40",
                "data.synthetic.num_fake=40", "data.split.test_fraction=0.3", "data.split.val_fraction=0.3",
                "model.input_size=64", "trainer.max_epochs=3", "trainer.accelerator=cpu",
                f"hydra.run.dir={root / 'run'}", cwd=root,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-3000:]
            (root / "output.txt").write_text(result.stdout)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    output = (root / "output.txt").read_text()
    return TrainedRun(next((root / "run" / "checkpoints").glob("epoch*.ckpt")), metrics, output)


@pytest.fixture(scope="session")
def trained(trained_run: TrainedRun) -> tuple[Path, dict]:
    """The shared tiny run: (best checkpoint, metrics)."""
    return trained_run.ckpt, trained_run.metrics


class OverconfidentHead(L.Callback):
    """Multiplies the head's weights by ``factor`` as training starts: logits ``factor`` times too large,
    where float32 softmax saturates (``+callbacks.overconfident._target_=conftest.OverconfidentHead``)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            for p in pl_module.head.parameters():
                p.mul_(self.factor)


def stand_in_served(logit: Callable, size: int, explainer=None, band=None, training_run=None):
    """What the service needs of a served model, around ``logit`` (a batch of uint8 images -> logits):
    threshold 0.5, no heatmaps unless ``explainer``, abstention ``band`` (default: none)."""
    scorer = SimpleNamespace(logit=logit, start_logit=at_once(logit), in_flight=1, threshold=0.5,
                             threshold_logit=0.0, abstain_band=band, preprocess={"size": size},
                             training_run=training_run)  # fmt: skip
    note = "" if explainer else "No heatmaps."
    return SimpleNamespace(scorer=scorer, size=size, explainer=explainer, explain_note=note, card={})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Captured output with file names that are not UTF-8 (lone surrogates), made sendable between
    pytest-xdist's processes, which speak UTF-8: each surrogate as its escape."""
    report = yield
    escaped = [(key, text.encode("utf-8", "backslashreplace").decode()) for key, text in report.sections]
    report.sections = escaped
    return report
