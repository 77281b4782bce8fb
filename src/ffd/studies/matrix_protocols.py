"""``python -m ffd.matrix``: the protocol ``protocol`` names (see ``conf/matrix.yaml``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ffd.errors import ConfigError
from ffd.studies.generalization import run_matrix
from ffd.studies.leave_one_out import leave_one_out

PROTOCOLS = ("each", "leave_one_out")


def run_protocol(cfg: DictConfig) -> dict[str, Any]:
    """``each``: every recipe trained on every data set and tested on every one; ``leave_one_out``: one
    model per held-out member of ``root``, trained on the others."""
    if cfg.protocol == "leave_one_out":
        return leave_one_out(cfg)
    if cfg.protocol != "each":
        raise ConfigError(f"protocol={cfg.protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
    return run_matrix(cfg)
