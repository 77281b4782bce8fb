"""Evaluate a model: ``python -m ffd.eval ckpt_path=outputs/train/<run>/checkpoints/<best>.ckpt``.

By default it scores the training run's own test split (from the run's
manifest.csv); ``dataset=PATH`` scores any other data set instead (all of its
usable images). Writes metrics.json, summary.md, predictions.csv and figures
into the eval run folder.
"""

from __future__ import annotations

from ffd.task import task

main = task("eval", "ffd.evaluation.evaluating:evaluate")

if __name__ == "__main__":
    main()
