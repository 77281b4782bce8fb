"""Generalization protocols: ``python -m ffd.matrix`` (see ``conf/matrix.yaml``).

``protocol=each`` (the default) trains every recipe on every data set (or reuses runs) and scores
every model on every data set's test split: matrix.md, matrix.csv, matrix.json and a heatmap,
matrix.png. ``protocol=leave_one_out root=DIR`` trains one model per held-out member of DIR on the
others and scores it on the unseen and the seen members (``ffd.studies.leave_one_out``).
"""

from __future__ import annotations

from ffd.task import task

main = task("matrix", "ffd.studies.matrix_protocols:run_protocol")

if __name__ == "__main__":
    main()
