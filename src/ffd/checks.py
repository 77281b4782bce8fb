"""Checking a composed config before any work: values' types and ranges, and the folders a run writes.

A Hydra callback (``conf/hydra/default.yaml``) runs the checks for every entry point:
the output folder before Hydra creates it, the settings before the task starts. A bad
setting is then one line naming the key and what it must be, instead of a traceback
after the manifest and the feature cache were built.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ffd.backends import RUNTIMES
from ffd.errors import ConfigError, exit_on_user_error


@dataclass(frozen=True)
class Rule:
    """What a setting must be: a type (int, float; ``none_ok``: null too) and a condition on it."""

    kind: type
    ok: Callable[[Any], bool]
    must: str  # "an integer >= 1": what the message says
    example: str
    none_ok: bool = False


_INT, _NUMBER = int, float
_ABSENT = object()
RULES: dict[str, Rule] = {
    "seed": Rule(_INT, lambda v: v >= 0, "an integer >= 0", "42"),
    "batch_size": Rule(_INT, lambda v: v >= 1, "an integer >= 1", "32"),
    "bootstrap": Rule(_INT, lambda v: v >= 0, "an integer >= 0 (0: no confidence intervals)", "1000"),
    "face_margin": Rule(_NUMBER, lambda v: 0 <= v <= 2, "a number from 0 to 2", "0.25"),
    "cv.folds": Rule(_INT, lambda v: v == 0 or v >= 2, "0 (no cross-validation) or an integer >= 2", "5"),
    "data.batch_size": Rule(_INT, lambda v: v >= 1, "an integer >= 1", "32"),
    "data.num_workers": Rule(_INT, lambda v: v >= 0, "an integer >= 0 (0: load in the main process)", "2"),
    "data.views": Rule(_INT, lambda v: v >= 1, "an integer >= 1", "8"),
    "data.split.val_fraction": Rule(_NUMBER, lambda v: 0 <= v < 1, "a number from 0 to below 1", "0.15"),
    "data.split.test_fraction": Rule(_NUMBER, lambda v: 0 <= v < 1, "a number from 0 to below 1", "0.15"),
    "model.optimizer.lr": Rule(_NUMBER, lambda v: v > 0, "a number > 0 (a learning rate)", "1e-3"),
    "model.dropout": Rule(_NUMBER, lambda v: 0 <= v < 1, "a number from 0 to below 1", "0.2"),
    "model.backbone_lr_factor": Rule(_NUMBER, lambda v: v >= 0, "a number >= 0", "0.1"),
    "model.input_size": Rule(_INT, lambda v: v >= 32, "an integer >= 32, or null", "224", none_ok=True),
    "trainer.max_epochs": Rule(_INT, lambda v: v >= 1 or v == -1, "an integer >= 1 (or -1: no limit)", "20"),
}


# Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {"runtime": RUNTIMES, "data.feature_dtype": ("float16", "uint8")}


def _problem(key: str, value: Any, rule: Rule) -> str | None:
    if value is None:
        return None if rule.none_ok else f"{key} is null: it must be {rule.must}, e.g. {key}={rule.example}."
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    typed = numeric and (rule.kind is float or isinstance(value, int))
    if typed and rule.ok(value):
        return None
    return f"{key}={value!r} is not valid: it must be {rule.must}, e.g. {key}={rule.example}."


def check_settings(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every setting of ``cfg`` that breaks a rule (a line each)."""
    problems = []
    for key, rule in RULES.items():
        if (value := OmegaConf.select(cfg, key, default=_ABSENT)) is not _ABSENT:
            problems.append(_problem(key, value, rule))
    for key, values in CHOICES.items():
        if (value := OmegaConf.select(cfg, key, default=_ABSENT)) is not _ABSENT and value not in values:
            problems.append(f"{key}={value!r} is not valid: choose one of {', '.join(values)}.")
    split = OmegaConf.select(cfg, "data.split")
    if split is not None and not any(problems):
        total = split.val_fraction + split.test_fraction
        if total >= 1:
            problems.append(
                f"data.split.val_fraction + data.split.test_fraction = {total:g}: they must sum below 1, "
                "leaving images to train on."
            )
    if found := [p for p in problems if p]:
        raise ConfigError("\n".join(found))


def ensure_writable(folder: str | Path, key: str) -> None:
    """Create ``folder`` if needed and check that a file can be written in it.

    Raises:
        ConfigError: naming ``key`` (the setting that chose the folder) and how to fix it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(
            f"{key}: can't write in {folder} ({err.strerror or err}). Point it at a writable folder, "
            f"e.g. {key}={Path(tempfile.gettempdir()) / 'ffd'}."
        ) from None


class CheckConfig(Callback):
    """Hydra callback: the output folder before Hydra creates it; settings and caches before the task."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_user_error(lambda: ensure_writable(config.hydra.run.dir, "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_user_error(lambda: ensure_writable(config.hydra.sweep.dir, "hydra.sweep.dir"))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        def check() -> None:
            check_settings(config)
            if OmegaConf.select(config, "data.cache", default="none") != "none":
                ensure_writable(config.paths.cache_dir, "paths.cache_dir")

        exit_on_user_error(check)
