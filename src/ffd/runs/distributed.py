"""Multi-process runs: what must not be launched locally."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ffd.errors import ConfigError

# Set when something other than Lightning started this process as one rank of several.
_EXTERNAL_LAUNCH = ("SLURM_PROCID", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def check_ddp_launch(trainer_cfg: Mapping[str, Any], multirun: bool) -> None:
    """Refuse local multi-process DDP inside a ``-m`` sweep.

    Lightning starts the other ranks by running the same command line again: in a
    ``-m`` sweep each of them would run the whole sweep. On SLURM
    (``hydra/launcher=submitit_slurm``) or under ``torchrun`` the ranks are started
    from outside and this is fine.
    """
    if not multirun or "ddp" not in str(trainer_cfg.get("strategy", "")):
        return
    if any(v in os.environ for v in _EXTERNAL_LAUNCH):
        return
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if devices == "auto":
        devices = torch.cuda.device_count() if trainer_cfg.get("accelerator") != "cpu" else 1
    elif isinstance(devices, str):  # "2", "-1" (all) or a list of ids "0,1"
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    count = len(devices) if isinstance(devices, Sequence) else int(devices)
    if count > 1 or count == -1 or nodes > 1:
        raise ConfigError(
            "trainer=ddp with several local processes can't run inside a -m sweep: Lightning starts the "
            "other ranks by running the command again, and each would run the whole sweep. Run each "
            "configuration as its own command, or sweep on SLURM with hydra/launcher=submitit_slurm "
            "(one job per run, tasks_per_node = trainer.devices)."
        )
