"""Train a model: ``python -m ffd.train +experiment=seed`` (Hydra; ``-m`` for sweeps).

Every run gets its own folder under ``outputs/train/`` with the composed config,
the data manifest, checkpoints, TensorBoard and CSV curves and the final metrics
(see ``ffd.runs.training``). ``cv.folds=k`` trains one model per fold.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ffd.config import register_resolvers
from ffd.errors import exit_on_user_error
from ffd.runs import sweep
from ffd.runs.training import run
from ffd.runtime import tune_malloc

register_resolvers()
sweep.register_resolvers()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    tune_malloc()
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    # Returned for sweepers (e.g. Optuna) that optimize one value.
    return exit_on_user_error(lambda: run(cfg, multirun))


if __name__ == "__main__":
    main()
