"""Every task config, experiment and group option composes and instantiates, and YAML is the one source
of every default: no Python default repeats or contradicts a value a config sets."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from collections import defaultdict
from importlib.resources import files
from typing import Any

import lightning as L
import pytest
import torch
from conftest import LIMITS, build
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

import ffd
from ffd.config import CONF_MODULE, compose_config
from ffd.data.datamodule import FaceDataModule
from ffd.runtime import fast_cpu_bf16, mixed_precision

CONF = files(CONF_MODULE)
TASKS = sorted(p.name.removesuffix(".yaml") for p in CONF.iterdir() if p.name.endswith(".yaml"))


def options(group: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (CONF / group).iterdir() if p.name.endswith(".yaml"))


EXPERIMENTS, DEBUG = options("experiment"), options("debug")
GROUPS = {g: options(g) for g in ("data", "model", "trainer", "logger")}
# Every way a config can differ from a task's default: each composed in the tests below.
OVERRIDES = [
    *(f"+experiment={e}" for e in EXPERIMENTS), *(f"+debug={d}" for d in DEBUG),
    *(f"{g}={o}" for g, opts in GROUPS.items() for o in opts), "hparams_search=optuna", "callbacks=gradcam",
]  # fmt: skip
REQUIRED = {"ckpt_path": "x.ckpt", "input": "photos/"}  # the ??? values of the task configs


@functools.cache
def task_config(name: str, overrides: tuple[str, ...] = (), with_hydra: bool = False):
    """A task's composed config, its required values filled in (composed once: read only)."""
    cfg = compose_config(name, list(overrides), with_hydra=with_hydra)
    given = [f"{k}={v}" for k, v in REQUIRED.items() if OmegaConf.is_missing(cfg, k)]
    return compose_config(name, [*given, *overrides], with_hydra=with_hydra) if given else cfg


def test_every_task_has_its_config_and_entry_point() -> None:
    assert set(TASKS) == {
        "train", "eval", "predict", "export", "explain", "audit", "matrix", "serve", "bench", "datasets",
        "weights", "common",
    }  # fmt: skip
    for name in set(TASKS) - {"common"}:
        assert callable(importlib.import_module(f"ffd.{name}").main), name


def check(cfg) -> None:
    with torch.device("meta"):  # the architecture and its settings, without the cost of initialising it
        model = instantiate(cfg.model, pretrained=False, input_size=64)
    data = build(cfg.data, preprocess=model.preprocess, limits=LIMITS)
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
    full = compose_config("train", ["hparams_search=optuna"], with_hydra=True)
    sweeper = full.hydra.sweeper
    assert sweeper.direction == "maximize" and "model.optimizer.lr" in sweeper.params
    assert str(full.hydra.sweep.dir).endswith("optuna/ffd") and sweeper.storage.endswith(
        "optuna/ffd/optuna.db"
    )


def test_fine_tuning_experiments(make_cfg) -> None:
    ft = make_cfg("+experiment=finetune_mobilenet_v2")
    assert ft.model.freeze == "gradual" and ft.model.backbone_lr_factor < 1 and ft.data.cache.mode == "pixels"
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


def test_data_dir_from_environment(make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("FFD_DATA_DIR", str(tmp_path / "faces"))
    assert make_cfg("+experiment=seed").data.root == str(tmp_path / "faces")


# One source of every default ---------------------------------------------------------------------

# Settings the code passes when it builds the object, never set in YAML.
PASSED_BY_CODE = {
    f"ffd.data.{m}": {"preprocess", "limits", "features", "fold"}
    for m in ("datamodule.FaceDataModule", "video_datamodule.VideoDataModule")
}
# Parameters named like a setting that are not that setting (each with what it is instead).
NOT_SETTINGS = {
    **{
        ("ffd.data.records.Record", f): f"a manifest row's {f}"
        for f in ("split", "status", "video", "method")
    },
    ("ffd.data.folder_layouts.ClassFolder", "split"): "a class folder's split, as its tree names it",
    ("ffd.data.folder_layouts.ClassFolder", "method"): "a class folder's generator, as its tree names it",
    ("ffd.data.layouts.Member", "split"): "a data.root member's own split (a list entry's split:)",
    ("ffd.data.layouts.Member", "method"): "a data.root member's own method (a list entry's method:)",
    ("ffd.data.layouts._record", "method"): "a manifest row's method",
    ("ffd.data.decoding.Item", "status"): "an input file's status",
    ("ffd.data.decoding.Item", "message"): "an input file's message",
    ("ffd.models.module.FakeFaceClassifier.train", "mode"): "torch's nn.Module.train(mode)",
}


def every_config() -> list[tuple[str, tuple[str, ...]]]:
    """(task, overrides): every task config, and the train config with every group option and experiment."""
    return (
        [(t, ()) for t in TASKS if t != "common"]
        + [("train", (o,)) for o in OVERRIDES]
        + [("eval", ("robustness=default",))]
    )


def leaves(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain config tree."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in leaves(v, f"{where}.{k}".lstrip("."))]
    return [(where, node)]


@pytest.fixture(scope="module")
def settings() -> dict[str, list[tuple[str, Any]]]:
    """Setting name -> (where, value) for every leaf value any config sets (Hydra's own node aside)."""
    found: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for task, overrides in every_config():
        tree = OmegaConf.to_container(task_config(task, overrides), resolve=False)
        for key, value in leaves(tree):
            found[key.rsplit(".", 1)[-1]].append(
                (f"{task} {' '.join(overrides)}: {key}".replace(" :", ":"), value)
            )
    return found


def defaults_of(obj: Any) -> dict[str, Any]:
    """The parameters with a default, and the default, of a function or of the constructor an ffd class
    defines (a dataclass: its fields); a constructor inherited from another package is not ffd's."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING
        }  # fmt: skip
    if inspect.isclass(obj):
        obj = vars(obj).get("__init__")
        if obj is None:
            return {}
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def ffd_callables() -> list[tuple[str, Any]]:
    """(qualified name, object) of every function, class and method defined in ffd."""
    found = []
    for module_info in pkgutil.walk_packages(ffd.__path__, "ffd."):
        if module_info.name.startswith("ffd.conf"):
            continue
        module = importlib.import_module(module_info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or name.startswith("__"):
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                found += [(f"{module.__name__}.{name}.{m}", f) for m, f in vars(obj).items()
                          if inspect.isfunction(f) and not m.startswith("__")]  # fmt: skip
    return found


def test_no_python_default_repeats_or_contradicts_yaml(settings) -> None:
    """Every function and class of ffd, against every value every config sets: a parameter named like a
    setting takes it from the config (no default of its own), or is listed in NOT_SETTINGS."""
    problems = []
    for qualname, obj in ffd_callables():
        for param, default in defaults_of(obj).items():
            if default is None or param not in settings or (qualname, param) in NOT_SETTINGS:
                continue
            where = ", ".join(f"{w}={v!r}" for w, v in settings[param][:3])
            verb = "repeats" if any(v == default for _, v in settings[param]) else "contradicts"
            problems.append(f"{qualname}({param}={default!r}) {verb} YAML ({where})")
    assert not problems, "\n".join(problems)


def ffd_targets(node, where: str = ""):
    """(path, target, settings) of every ``_target_: ffd.*`` node of a plain config tree."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).startswith("ffd."):
            yield where, node["_target_"], node
        for key, value in node.items():
            yield from ffd_targets(value, f"{where}.{key}".lstrip("."))


@pytest.mark.parametrize(("task", "overrides"), every_config())
def test_every_target_takes_its_settings_from_yaml(task: str, overrides: tuple[str, ...]) -> None:
    """Each ffd class or function a config builds takes every setting from YAML: Python repeats no
    value the YAML sets (so the two can't disagree) and needs none it leaves out."""
    tree = OmegaConf.to_container(task_config(task, overrides, with_hydra=True), resolve=False)
    for where, target, node in ffd_targets(tree):
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
