"""Every experiment and every config group option composes and instantiates."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from ffd.config import CONF_DIR
from ffd.data.datamodule import FaceDataModule
from ffd.runtime import fast_cpu_bf16, mixed_precision

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
GROUPS = {
    g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("data", "model", "trainer", "logger")
}
DEBUG = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


def check(cfg) -> None:
    model = instantiate(cfg.model, pretrained=False, input_size=64)
    data = instantiate(cfg.data, preprocess=model.preprocess)
    assert isinstance(data, FaceDataModule)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert isinstance(trainer, L.Trainer)


def test_groups_were_found() -> None:
    assert {"seed", "demo"} <= set(EXPERIMENTS) and {"fdr", "overfit"} <= set(DEBUG)
    assert GROUPS["data"] == ["ciplab", "synthetic", "video"] and "mobilenet_v2" in GROUPS["model"]
    assert {"default", "cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"mobilenet_v2", "timm"} <= set(GROUPS["model"])
    assert {"finetune_mobilenet_v2", "effnet_b0"} <= set(EXPERIMENTS)


def test_optuna_search_composes(make_cfg) -> None:
    cfg = make_cfg("hparams_search=optuna", "+experiment=demo")
    assert cfg.optimized_metric == "val/auroc_best" and cfg.trials == 20
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = full.hydra.sweeper
    assert sweeper.direction == "maximize" and "model.optimizer.lr" in sweeper.params
    assert str(full.hydra.sweep.dir).endswith("optuna/ffd") and sweeper.storage.endswith(
        "optuna/ffd/optuna.db"
    )


def test_fine_tuning_experiments(make_cfg) -> None:
    ft = make_cfg("+experiment=finetune_mobilenet_v2")
    assert ft.model.freeze == "gradual" and ft.model.backbone_lr_factor < 1 and ft.data.cache == "pixels"
    assert ft.model.scheduler.name == "cosine"
    eff = make_cfg("+experiment=effnet_b0")
    assert eff.model.backbone == "timm:efficientnet_b0" and eff.model.freeze == "full"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment(make_cfg, experiment: str) -> None:
    check(make_cfg(f"+experiment={experiment}"))


@pytest.mark.parametrize("debug", DEBUG)
def test_debug(make_cfg, debug: str) -> None:
    check(make_cfg(f"+debug={debug}"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_group_option(make_cfg, group: str, option: str) -> None:
    if group == "trainer" and option == "gpu":
        cfg = make_cfg("trainer=gpu")
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "16-mixed"
        return  # building a GPU trainer needs a GPU; its config is checked above
    if group == "logger":
        cfg = make_cfg(f"logger={option}")
        assert list(cfg.logger) == [option]
    else:
        cfg = make_cfg(f"{group}={option}")
    check(cfg)


def test_seed_recipe_values(make_cfg) -> None:
    cfg = make_cfg("+experiment=seed")
    assert cfg.trainer.max_epochs == 20 and cfg.model.freeze == "frozen" and cfg.model.head == "flatten"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.data.root == cfg.paths.data_dir and cfg.data._target_.endswith("FaceDataModule")
    # Mixed precision where it is fast: fp16 on CUDA, bf16 on a CPU with AVX-512/AMX, else fp32.
    assert mixed_precision("gpu") == "16-mixed"
    assert mixed_precision("cpu") == ("bf16-mixed" if fast_cpu_bf16() else "32-true")
    assert cfg.trainer.precision == mixed_precision(cfg.trainer.accelerator)


def test_data_dir_from_environment(make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FFD_DATA_DIR", str(tmp_path / "faces"))
    assert make_cfg("+experiment=seed").data.root == str(tmp_path / "faces")


# Settings the code passes when it builds the object, never set in YAML.
PASSED_BY_CODE = {
    f"ffd.data.{m}": {"preprocess", "encoder", "fold"}
    for m in ("datamodule.FaceDataModule", "video_datamodule.VideoDataModule")
}
OVERRIDES = [
    *(f"+experiment={e}" for e in EXPERIMENTS), *(f"+debug={d}" for d in DEBUG),
    *(f"{g}={o}" for g, opts in GROUPS.items() for o in opts), "hparams_search=optuna", "callbacks=gradcam",
]  # fmt: skip


def ffd_targets(node, where: str = ""):
    """(path, target, settings) of every ``_target_: ffd.*`` node of a plain config tree."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).startswith("ffd."):
            yield where, node["_target_"], node
        for key, value in node.items():
            yield from ffd_targets(value, f"{where}.{key}".lstrip("."))


@pytest.mark.parametrize("override", OVERRIDES)
def test_yaml_is_the_one_source_of_every_default(override: str) -> None:
    """Each ffd class or function a config builds takes every setting from YAML: Python repeats no
    value the YAML sets (so the two can't disagree) and needs none it leaves out."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[override], return_hydra_config=True)
    tree = OmegaConf.to_container(cfg, resolve=False)
    found = list(ffd_targets(tree))
    assert any(target.endswith("FakeFaceClassifier") for _, target, _ in found)
    for where, target, node in found:
        params = inspect.signature(get_object(target)).parameters
        set_here = {k for k in node if not k.startswith("_")}
        passed = PASSED_BY_CODE.get(target, set())
        assert set_here <= set(params), f"{where}: {target} has no {sorted(set_here - set(params))}"
        repeated = sorted(k for k in set_here if params[k].default is not inspect.Parameter.empty)
        assert not repeated, f"{where}: {target} restates YAML defaults for {repeated}"
        missing = sorted(
            k for k, p in params.items()
            if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
            and k not in set_here | passed
        )  # fmt: skip
        assert not missing, f"{where}: {target} needs {missing}, which no YAML sets"
