"""Checking a composed config before any work: every setting against its rule (``ffd.rules``), and the
folders a run writes.

A Hydra callback (``conf/hydra/default.yaml``) runs the checks for every entry point:
the output folder before Hydra creates it, the settings before the task starts. A bad
setting is then one line naming the key and what it must be, instead of a traceback
after the manifest and the feature cache were built.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ffd.errors import ConfigError, exit_on_user_error
from ffd.rules import check_config


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
            check_config(config)
            if OmegaConf.select(config, "data.cache.mode", default="none") != "none":
                ensure_writable(config.paths.cache_dir, "paths.cache_dir")

        exit_on_user_error(check)
