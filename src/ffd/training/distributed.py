"""Multi-process runs: what must not be launched locally, and what several machines must share."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate

from ffd.errors import ConfigError

log = logging.getLogger(__name__)

# The Trainer settings that decide the strategy, the number of processes and who starts them.
_LAUNCH_SETTINGS = ("accelerator", "strategy", "devices", "num_nodes", "plugins")


def local_processes_started_by_lightning(trainer_cfg: Mapping[str, Any]) -> int:
    """How many processes Lightning's launcher would start on this machine by running the command
    line again (1: none).

    Lightning's own connector resolves the settings, as the Trainer will: ``strategy: auto`` with
    ``devices: 4`` is DDP too, and under SLURM or torchrun the processes are started from outside.
    """
    # Lightning's private API, but the very code the Trainer runs to choose (the alternative is a copy).
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    settings = instantiate({k: trainer_cfg[k] for k in _LAUNCH_SETTINGS if k in trainer_cfg}, _convert_="all")
    launcher = _AcceleratorConnector(**settings).strategy.launcher
    if not isinstance(launcher, _SubprocessScriptLauncher):  # one process, or spawned (not the command)
        return 1
    return 1 if launcher.cluster_environment.creates_processes_externally else launcher.num_processes


def check_ddp_launch(trainer_cfg: Mapping[str, Any], multirun: bool) -> None:
    """Refuse a ``-m`` sweep whose runs Lightning would train in several local processes.

    Lightning starts the other ranks by running the same command line again: in a
    ``-m`` sweep each of them would run the whole sweep. On SLURM
    (``hydra/launcher=slurm``) or under ``torchrun`` the ranks are started from
    outside and this is fine.
    """
    if not multirun:
        return
    n = local_processes_started_by_lightning(trainer_cfg)
    if n > 1:
        raise ConfigError(
            f"Lightning would train each run of this -m sweep in {n} processes (DDP over trainer.devices="
            f"{trainer_cfg.get('devices')}), starting the other ranks by running the command line again, "
            "and each would run the whole sweep. Sweep with trainer.devices=1, run each configuration as its "
            "own command, or sweep on SLURM with hydra/launcher=slurm (one job per run, "
            "hydra.launcher.tasks_per_node = trainer.devices)."
        )


class SharedRunFolder(L.Callback):
    """Stop a run on several machines unless every rank sees the files rank 0 writes.

    Global rank 0 alone writes the checkpoints, the manifest and the metrics into the run folder,
    and every rank reads a checkpoint back to resume: without a filesystem that all the nodes
    share, the other nodes would fail or train on something else, late. Checked at setup, before
    any checkpoint is read: rank 0 writes a marker that every rank must find.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.num_nodes <= 1:
            return
        strategy = trainer.strategy
        marker = self.output_dir / f".shared-check-{strategy.broadcast(uuid.uuid4().hex)}"
        if trainer.is_global_zero:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        strategy.barrier("ffd-shared-run-folder")
        seen = marker.is_file()
        shared = strategy.reduce_boolean_decision(seen, all=True)
        if trainer.is_global_zero:
            marker.unlink()
        if not shared:
            where = "sees" if seen else "does not see"
            raise ConfigError(
                f"trainer.num_nodes={trainer.num_nodes} needs a run folder that every node shares: some "
                f"ranks don't see the files global rank 0 writes into paths.output_dir ({self.output_dir}; "
                f"rank {trainer.global_rank} {where} them). Put the run folder on a filesystem mounted on "
                "all the nodes (hydra.run.dir or hydra.sweep.dir on shared storage)."
            )
