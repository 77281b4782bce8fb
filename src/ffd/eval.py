"""Evaluate a model: ``python -m ffd.eval ckpt_path=outputs/train/<run>/checkpoints/<best>.ckpt``.

By default it scores the training run's own test split (from the run's
manifest.csv); ``dataset=PATH`` scores any other data set instead (all of its
usable images). Writes metrics.json, summary.md, predictions.csv and figures
into the eval run folder.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ffd.analysis.evaluate import evaluate
from ffd.errors import exit_on_user_error
from ffd.runtime import tune_malloc


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    tune_malloc()
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    main()
