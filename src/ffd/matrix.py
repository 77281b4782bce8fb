"""Train x test generalization matrix: ``python -m ffd.matrix`` (see ``conf/matrix.yaml``).

Trains every recipe on every data set (or reuses runs) and scores every model on every data
set's test split: matrix.md, matrix.csv, matrix.json and a heatmap, matrix.png.
"""

from __future__ import annotations

from ffd.task import task

main = task("matrix", "ffd.studies.generalization:run_matrix")

if __name__ == "__main__":
    main()
