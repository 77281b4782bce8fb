"""Train x test generalization matrix: ``python -m ffd.matrix`` (see ``conf/matrix.yaml``).

Trains every recipe on every data set (or reuses runs) and scores every model on every data
set's test split: matrix.md, matrix.csv, matrix.json and a heatmap, matrix.png.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ffd.errors import exit_on_user_error
from ffd.runs.matrix import run_matrix
from ffd.runtime import tune_malloc


@hydra.main(version_base="1.3", config_path="../../conf", config_name="matrix")
def main(cfg: DictConfig) -> None:
    tune_malloc()
    exit_on_user_error(lambda: run_matrix(cfg))


if __name__ == "__main__":
    main()
