"""Run bookkeeping: what a run was made from, resuming a killed run, per-epoch seeding."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ffd.errors import ConfigError
from ffd.files import sha256_file
from ffd.provenance import provenance

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class RunInfo(L.Callback):
    """Write ``run_info.json`` into the run folder once the data is set up (rank 0 only).

    It holds ffd's version and git commit, Python and package versions, the sha256 of
    the run's ``manifest.csv`` (which files, labels and splits it trained on), the
    seed, the world size and the command line. Hydra writes the composed config
    next to it (``.hydra/config.yaml``).

    Args:
        path: The JSON file to write.
        manifest_path: The run's manifest, hashed once the data module has written it.
        seed: The run's seed.
    """

    def __init__(self, path: str, manifest_path: str | None = None, seed: int | None = None) -> None:
        self.path = Path(path)
        self.manifest_path = Path(manifest_path) if manifest_path else None
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        manifest = self.manifest_path if self.manifest_path and self.manifest_path.is_file() else None
        info: dict[str, Any] = {
            **provenance(),
            "manifest": str(manifest) if manifest else None,
            "manifest_sha256": sha256_file(manifest) if manifest else None,
            "seed": self.seed,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "world_size": trainer.world_size,
            "command": [Path(sys.executable).name, *sys.argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run: keep every earlier attempt's record, whole
            previous = json.loads(self.path.read_text())
            info["earlier_attempts"] = previous.pop("earlier_attempts", []) + [previous]
        self.path.write_text(json.dumps(info, indent=2))


class EpochSeed(L.Callback):
    """Seed torch, numpy and random at the start of every training epoch from (seed, epoch).

    Shuffling, augmentation, the feature cache's view choice and dropout then depend on
    the epoch only, not on how many epochs this process has run: a run resumed from a
    checkpoint draws the same numbers as one that was never interrupted.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Distinct per rank, as seed_everything(workers=True) would make them.
        s = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % 2**32
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """What ``ckpt_path`` resumes from: a checkpoint file, a run folder, or ``last``.

    - a ``.ckpt`` file: Lightning resumes from it (this run writes into its own folder);
    - a run folder (``outputs/train/<run>``): its ``checkpoints/last.ckpt``;
    - ``last``: this run folder's ``checkpoints/last.ckpt``. To continue a killed run in
      its own folder, run again with ``hydra.run.dir=<that folder> ckpt_path=last``.

    Raises:
        ConfigError: When there is nothing to resume from, with the command that would work.
    """
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / LAST
        if last.is_file():
            return str(last)
        raise ConfigError(
            f"ckpt_path=last: this run folder ({output_dir}) has no checkpoints/{LAST}. To continue a "
            "killed run, run it again in its own folder: hydra.run.dir=outputs/train/<run> ckpt_path=last "
            "(or pass ckpt_path=outputs/train/<run> to continue from it into a new folder)."
        )
    path = Path(ckpt_path)
    if path.is_dir():
        last = path / "checkpoints" / LAST
        if not last.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path} is a folder without checkpoints/{LAST} to resume from.")
        return str(last)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (a .ckpt file, a run folder or 'last').")
    return str(path)


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
