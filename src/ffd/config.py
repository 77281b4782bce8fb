"""Composing ffd's Hydra configs outside ``python -m ffd.train`` (benchmarks, tools, tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ffd.runtime import register_resolvers

# The configs live at the top of the source checkout (ffd is installed editable from it).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config ``python -m ffd.<name> OVERRIDES`` would run with (without Hydra's runtime node)."""
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides or [])
