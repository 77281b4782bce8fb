"""Leakage and shortcut audit: ``python -m ffd.audit [+experiment=seed]`` (any train overrides).

Three checks on the data set and recipe the config describes, in one report:

1. leakage: duplicates dropped, and no content hash in two splits (an error);
2. the label-shuffle control: the recipe trained on permuted labels must score
   at chance on the test split;
3. the metadata-only baseline: file properties alone must not separate the classes.

Writes audit.json and audit.md into ``outputs/audit/<date_time>/``.
"""

from __future__ import annotations

from ffd.task import task

main = task("audit", "ffd.studies.shortcut_audit:audit")

if __name__ == "__main__":
    main()
