"""Get the Kaggle CIPLAB data set: ``make data`` (= ``python -m ffd.data.download``).

Uses ``kagglehub`` where it is installed and can reach Kaggle; otherwise prints
the manual steps. The data lands in kagglehub's cache and the data folder
(FFD_DATA_DIR, default data/ciplab) becomes a link to it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ffd.config import compose_config
from ffd.data.layouts import DataLayoutError, discover

log = logging.getLogger(__name__)

DATASET = "ciplab/real-and-fake-face-detection"
MANUAL = """\
To get the data by hand:
  1. Sign in at https://www.kaggle.com and open https://www.kaggle.com/datasets/{dataset}
  2. Download the archive and unzip it into {target}
     (any depth works: ffd finds training_real/ and training_fake/ and drops the duplicate tree)
  3. Train: python -m ffd.train +experiment=seed   (or set FFD_DATA_DIR to another folder)"""


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = Path(compose_config("train").paths.data_dir)  # FFD_DATA_DIR or data/ciplab
    manual = MANUAL.format(dataset=DATASET, target=target.resolve())
    try:
        n = len(discover(target))
        log.info("%s already holds %d images; nothing to do.", target, n)
        return 0
    except DataLayoutError:
        pass
    if target.exists() and not target.is_symlink() and any(target.iterdir()):
        log.error("%s exists and is not a CIPLAB layout; not touching it.\n%s", target, manual)
        return 1
    try:
        import kagglehub
    except ImportError:
        log.error("kagglehub is not installed (pip install 'ffd[kaggle]').\n%s", manual)
        return 1
    try:
        path = Path(kagglehub.dataset_download(DATASET))
    except Exception as err:  # network, credentials, quota: kagglehub raises many kinds
        log.error("Download with kagglehub failed: %s\n%s", err, manual)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink() if target.is_symlink() else target.rmdir()
    target.symlink_to(path, target_is_directory=True)
    log.info("CIPLAB downloaded to %s and linked as %s (%d images).", path, target, len(discover(target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
