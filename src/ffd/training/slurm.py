"""SLURM jobs (hydra-submitit-launcher): a preempted or timed-out job continues where it stopped.

Sent USR2 before its time limit or on preemption, a submitit job is requeued with the
same overrides (the launcher's ``checkpoint``), as SLURM's own preemption requeue runs
it again unchanged; Hydra keeps the sweep's start time in the pickled config, so the
next attempt has the same run folder and the same job id. Each attempt records its job
id in the run folder; what an earlier attempt of the same job left there says how to go
on: a ``checkpoints/last.ckpt`` without ``metrics.json`` is a run cut short, resumed with
``ckpt_path=last``; a ``metrics.json`` is a finished run (e.g. a cross-validation fold
done before the preemption), not trained again. A run folder that another job or a
local run left is never resumed on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from hydra.core.hydra_config import HydraConfig

from ffd.runtime import is_rank_zero
from ffd.training.resume import LAST

log = logging.getLogger(__name__)

SUBMITIT_LAUNCHERS = "hydra_plugins.hydra_submitit_launcher."
JOB_FILE = ".submitit_job"  # in the run folder: the id of the submitit job that trains it
METRICS = "metrics.json"


def submitit_job_id() -> str | None:
    """The id of the hydra-submitit-launcher job running this (SLURM's, or the local executor's)."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if not str(hydra.launcher.get("_target_", "")).startswith(SUBMITIT_LAUNCHERS):
        return None
    return str(hydra.job.id)


def start_attempt(output_dir: str | Path) -> Literal["finished", "unfinished"] | None:
    """Record this submitit job in its run folder; return what an earlier attempt of the same job
    left there (None: there was none, or this is no submitit job)."""
    job = submitit_job_id()
    if job is None:
        return None
    out = Path(output_dir)
    earlier = (out / JOB_FILE).is_file() and (out / JOB_FILE).read_text() == job
    if is_rank_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / JOB_FILE).write_text(job)
    if not earlier:
        return None
    if (out / METRICS).is_file():
        return "finished"
    return "unfinished" if (out / "checkpoints" / LAST).is_file() else None


def finished_metrics(output_dir: str | Path) -> dict[str, float]:
    """The metrics that a finished run wrote."""
    log.info("%s holds a finished run (%s): this requeued job does not train it again.", output_dir, METRICS)
    metrics: dict[str, float] = json.loads((Path(output_dir) / METRICS).read_text())
    return metrics
