"""Composing ffd's Hydra configs outside ``python -m ffd.<task>`` (benchmarks, tools, tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ffd.runtime import mixed_precision

# The configs live at the top of the source checkout (ffd is installed editable from it).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_resolvers() -> None:
    """``${ffd_precision:accelerator}``: the training precision of an accelerator (idempotent)."""
    if not OmegaConf.has_resolver("ffd_precision"):
        OmegaConf.register_new_resolver("ffd_precision", mixed_precision)


def compose_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``python -m ffd.<name> OVERRIDES`` would run with (without Hydra's runtime node)."""
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides or [])
