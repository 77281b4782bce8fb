"""Train a model: ``python -m ffd.train +experiment=seed`` (Hydra; ``-m`` for sweeps).

Every run gets its own folder under ``outputs/train/`` with the composed config,
the data manifest, checkpoints, TensorBoard and CSV curves and the final metrics
(see ``ffd.training.fitting``). ``cv.folds=k`` trains one model per fold.
"""

from __future__ import annotations

from ffd.task import task

main = task("train", "ffd.training.fitting:run")

if __name__ == "__main__":
    main()
