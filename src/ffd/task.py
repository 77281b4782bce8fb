"""The one wrapper every ``python -m ffd.<task>`` runs under.

``main = task("eval", "ffd.evaluation.evaluating:evaluate")`` makes a task's ``main``: Hydra composes
``conf/eval.yaml`` (from the installed package) with the command line's overrides, the settings
are checked before any work (``ffd.checks.CheckConfig``), the allocator is tuned, the work is
imported (only then: a bad setting is reported before the seconds torch and Lightning take to
import) and run, an ``FfdError`` becomes one log line and exit status 2, and what the work returns
goes back to Hydra (a sweeper optimizes it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from ffd.config import CONF_PATH, register_resolvers
from ffd.errors import exit_on_user_error
from ffd.runtime import tune_malloc
from ffd.training import sweeps


def task(config_name: str, work: str) -> Callable[[], Any]:
    """The ``main`` of a task: ``work`` ("module:function", a function of the composed config) on
    ``conf/<config_name>.yaml`` and the command line."""
    register_resolvers()
    sweeps.register_resolvers()
    module, function = work.split(":")

    def run(cfg: DictConfig) -> Any:
        tune_malloc()
        return exit_on_user_error(lambda: getattr(importlib.import_module(module), function)(cfg))

    decorate = hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=config_name)
    main: Callable[[], Any] = decorate(run)
    return main
