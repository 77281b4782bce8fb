"""ffd's Hydra configs: where they live (inside the installed package, as ``ffd.conf``), the user's own
``./conf`` beside them, and how code outside a ``python -m ffd.<task>`` run composes them."""

from __future__ import annotations

import logging
import os
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from ffd.runtime import mixed_precision

log = logging.getLogger(__name__)

# The configs: the repository's top-level conf/, which the wheel carries as the package ffd.conf.
CONF_MODULE = "ffd.conf"
CONF_PATH = f"pkg://{CONF_MODULE}"
USER_CONF = "FFD_USER_CONF"  # the user's config folder, if not ./conf


def user_conf() -> Path | None:
    """The user's own config folder ($FFD_USER_CONF, else ./conf), if there is one and it is not
    ffd's own (a source checkout's ./conf is the packaged folder)."""
    folder = Path(os.environ.get(USER_CONF, "conf")).resolve()
    if not folder.is_dir() or folder == Path(str(files(CONF_MODULE))).resolve():
        return None
    return folder


class UserConfigs(SearchPathPlugin):
    """Hydra's search path, for ffd's tasks: ffd's packaged configs, then the user's folder
    (``user_conf``). A user's config adds a new option (``./conf/experiment/mine.yaml``); one with
    the name of a packaged config is not read (Hydra's order: the first found wins), with a warning."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(e.path == CONF_PATH for e in search_path.get_path()) or (folder := user_conf()) is None:
            return
        search_path.append("ffd-user", f"file://{folder}", anchor=SearchPathQuery(provider="main"))
        packaged = Path(str(files(CONF_MODULE)))
        shadowed = sorted(p.relative_to(folder) for p in folder.rglob("*.yaml")
                          if (packaged / p.relative_to(folder)).is_file())  # fmt: skip
        for name in shadowed:
            log.warning("%s is not read: %s is the name of one of ffd's own configs. Rename it.",
                        folder / name, name)  # fmt: skip


def register_resolvers() -> None:
    """``${ffd_precision:accelerator}`` (the training precision of an accelerator), and the user's
    config folder on Hydra's search path (idempotent)."""
    if not OmegaConf.has_resolver("ffd_precision"):
        OmegaConf.register_new_resolver("ffd_precision", mixed_precision)
    Plugins.instance().register(UserConfigs)


def compose_config(name: str, overrides: list[str] | None = None, with_hydra: bool = False) -> DictConfig:
    """The config ``python -m ffd.<name> OVERRIDES`` would run with (``with_hydra``: Hydra's own node too,
    without its runtime facts)."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():  # inside a task (ffd bench composes its runs' configs)
        return compose(name, overrides=overrides or [], return_hydra_config=with_hydra)
    with initialize_config_module(CONF_MODULE, version_base="1.3"):
        return compose(name, overrides=overrides or [], return_hydra_config=with_hydra)
