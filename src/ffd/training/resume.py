"""Resuming a killed run: what ``ckpt_path`` resumes from, and keeping the earlier attempt's curves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger

from ffd.errors import ConfigError
from ffd.models.checkpoint import read_checkpoint
from ffd.runtime import is_rank_zero

log = logging.getLogger(__name__)

LAST = "last.ckpt"


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """What ``ckpt_path`` resumes from: a checkpoint file, a run folder, or ``last``.

    - a ``.ckpt`` file: Lightning resumes from it (this run writes into its own folder);
    - a run folder (``outputs/train/<run>``): its ``checkpoints/last.ckpt``;
    - ``last``: this run folder's ``checkpoints/last.ckpt``. To continue a killed run in
      its own folder, run again with ``hydra.run.dir=<that folder> ckpt_path=last``.

    The checkpoint is read and checked here, before anything in the run folder is touched.

    Raises:
        ConfigError: When there is nothing to resume from, with the command that would work.
        FfdError: The checkpoint is truncated, unsafe or not ffd's (``read_checkpoint``).
    """
    resolved = _resolve(ckpt_path, output_dir)
    if resolved:
        read_checkpoint(resolved)
    return resolved


def _resolve(ckpt_path: str | None, output_dir: str | Path) -> str | None:
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


def keep_csv_history(loggers: list[Any]) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv: keep the killed run's epochs beside it."""
    if not is_rank_zero():  # DDP: rank 0 did (before it started the others)
        return
    for logger in loggers:
        if isinstance(logger, CSVLogger) and (csv := Path(logger.log_dir) / "metrics.csv").is_file():
            n = 1 + sum(1 for _ in csv.parent.glob("metrics.before_resume_*.csv"))
            csv.rename(csv.with_name(f"metrics.before_resume_{n}.csv"))
            log.info("Kept the earlier epochs' %s as %s", csv.name, f"metrics.before_resume_{n}.csv")
