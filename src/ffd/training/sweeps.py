"""Sweeps: one table of every run's metrics, and Optuna studies that continue where they stopped.

- ``SweepSummary`` (a Hydra callback, on in ``conf/hydra/default.yaml``) reads each run
  folder of a ``-m`` sweep when it ends and writes ``summary.csv`` and ``summary.md``
  into the sweep folder.
- ``hparams_search=optuna`` runs hydra-optuna-sweeper with a study that continues
  where it stopped: the study lives in SQLite in a folder named after it, ``trials`` is
  the number of completed trials the study should have (``trials_left`` turns it into
  the sweeper's ``n_trials``, so a rerun runs only the missing ones), ``OptunaStudy``
  marks a trial that was running when the sweep was killed as failed, and every
  invocation writes its runs under its own start time, so no run folder is reused.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ffd.metrics.tables import markdown_table

log = logging.getLogger(__name__)

# Columns of the summary, in this order, when any run has them.
METRICS = ("val/auroc_best", "val/auroc", "test/auroc", "test/acc", "val/threshold")


def run_folders(sweep_dir: Path) -> list[Path]:
    """A sweep's run folders: ``<n>`` or (Optuna, one folder per invocation) ``<started>/<n>``."""
    if not sweep_dir.is_dir():
        return []
    runs = [p for p in sweep_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    runs += [
        p for p in sweep_dir.glob("*/*") if p.is_dir() and p.name.isdigit() and not p.parent.name.isdigit()
    ]
    return sorted(runs, key=lambda p: (str(p.parent), int(p.name)))


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run folder: its overrides, metrics, wall time; write summary.csv and summary.md.

    A run without ``metrics.json`` (failed, killed, or still running) is listed as ``incomplete``.
    """
    sweep_dir = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    overrides: list[list[str]] = []
    for run in run_folders(sweep_dir):
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides.append([str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.exists() else [])
        row: dict[str, Any] = {"run": run.relative_to(sweep_dir).as_posix()}
        metrics_file, timings_file = run / "metrics.json", run / "timings.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            row |= {"status": "done", **{m: metrics[m] for m in METRICS if m in metrics}}
        else:
            row["status"] = "incomplete"
        if timings_file.exists():
            timings = json.loads(timings_file.read_text())  # fit_s includes the data setup
            row["wall_s"] = round(timings["fit_s"] + timings.get("calibrate_s", 0.0), 1)
        rows.append(row)
    if not rows:
        return rows
    # Only what differs between the runs; what they share is in each run's .hydra/overrides.yaml.
    common = set.intersection(*(set(o) for o in overrides))
    for row, ovr in zip(rows, overrides, strict=True):
        row["overrides"] = " ".join(o for o in ovr if o not in common)
    columns = ["run", "overrides", "status", *[m for m in METRICS if any(m in r for r in rows)], "wall_s"]
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    cells = [[f"{r[c]:.1f}" if c == "wall_s" and c in r else r.get(c) for c in columns] for r in rows]
    lines = markdown_table(columns, cells, digits=4)
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, tabulate its runs (``summarize``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        if rows:
            log.info("Sweep summary (%d runs): %s\n%s", len(rows), sweep_dir / "summary.md",
                     (sweep_dir / "summary.md").read_text())  # fmt: skip


class OptunaStudy(Callback):
    """Hydra callback for ``hparams_search=optuna``: get the study's storage ready before the sweeper.

    Creates the SQLite file's folder (Optuna does not) and marks trials that a killed
    sweep left ``RUNNING`` as failed: they will never report, and the rerun runs them
    anew. (So run one sweep process per study at a time.)

    Args:
        storage: The sweeper's storage URL (``sqlite:///...``).
        study_name: The study's name.
    """

    def __init__(self, storage: str | None, study_name: str | None) -> None:
        self.storage, self.study_name = storage, study_name

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.storage or not self.study_name:
            return
        if self.storage.startswith("sqlite:///"):
            Path(self.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        study = _load_study(self.storage, self.study_name)
        if study is None:
            return
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning("Trial %d was interrupted: marked failed (its folder is kept).", trial.number)


def _load_study(storage: str | None, study_name: str | None) -> Any:
    """The study, or None when there is none yet (no storage, no database file, no such study)."""
    if not storage or not study_name:
        return None
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return None


def trials_left(total: Any, storage: str | None, study_name: str | None) -> int:
    """How many trials a study still needs to have ``total`` complete (or pruned) ones.

    hydra-optuna-sweeper runs ``n_trials`` more trials on every invocation;
    ``hparams_search=optuna`` sets ``n_trials: ${ffd_trials_left:${trials},...}`` so that
    ``trials`` is the study's size and a rerun finishes an interrupted study.
    """
    total = int(total)
    study = _load_study(storage, study_name)
    if study is None:
        return total
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    log.info("Study %r: %d of %d trials done, %d to run.", study_name, done, total, max(0, total - done))
    return max(0, total - done)


def sampler_seed(seed: Any, storage: str | None, study_name: str | None) -> int:
    """``seed`` plus the number of trials the study has: a rerun must not replay the first draws.

    A sampler seeded alike on every invocation would suggest the same parameters again.
    """
    study = _load_study(storage, study_name)
    return int(seed) + (len(study.trials) if study is not None else 0)


def register_resolvers() -> None:
    """``${ffd_trials_left:total,storage,study}`` and ``${ffd_sampler_seed:seed,storage,study}``."""
    if not OmegaConf.has_resolver("ffd_trials_left"):
        OmegaConf.register_new_resolver("ffd_trials_left", trials_left)
    if not OmegaConf.has_resolver("ffd_sampler_seed"):
        OmegaConf.register_new_resolver("ffd_sampler_seed", sampler_seed)
