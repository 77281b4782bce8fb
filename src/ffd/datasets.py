"""Get the data a training config names: ``python -m ffd.datasets [+experiment=...] [data=...]``.

A synthetic set (``data=synthetic``, ``data=video``) is generated into ``data.root`` (as training
would on first use); ``data=ciplab`` downloads Kaggle's CIPLAB with kagglehub, or prints the manual
steps (``ffd.training.data_prep``).
"""

from __future__ import annotations

from ffd.task import task

main = task("datasets", "ffd.training.data_prep:prepare_data")

if __name__ == "__main__":
    main()
