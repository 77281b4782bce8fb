"""Getting Kaggle's CIPLAB data set (``ffd data data=ciplab``): kagglehub where it is installed and can
reach Kaggle, else the manual steps. The data lands in kagglehub's cache and the data folder becomes a
link to it."""

from __future__ import annotations

import logging
from pathlib import Path

from ffd.data.layouts import DataLayoutError, discover
from ffd.errors import FfdError

log = logging.getLogger(__name__)

DATASET = "ciplab/real-and-fake-face-detection"
MANUAL = """\
To get the data by hand:
  1. Sign in at https://www.kaggle.com and open https://www.kaggle.com/datasets/{dataset}
  2. Download the archive and unzip it into {target}
     (any depth works: ffd finds training_real/ and training_fake/ and drops the duplicate tree)
  3. Train: ffd train +experiment=seed   (or set FFD_DATA_DIR to another folder)"""


def download_ciplab(target: Path) -> Path:
    """CIPLAB in ``target`` (a link to kagglehub's copy), unless a data set is there already.

    Raises:
        FfdError: ``target`` holds something else, or the download is not possible here (the message
            has the manual steps).
    """
    manual = MANUAL.format(dataset=DATASET, target=target.resolve())
    try:
        n = len(discover(target))
        log.info("%s already holds %d images; nothing to do.", target, n)
        return target
    except DataLayoutError:
        pass
    if target.exists() and not target.is_symlink() and any(target.iterdir()):
        raise FfdError(f"{target} exists and is not a CIPLAB layout; not touching it.\n{manual}")
    try:
        import kagglehub
    except ImportError:
        raise FfdError(f"kagglehub is not installed (pip install 'ffd[kaggle]').\n{manual}") from None
    try:
        path = Path(kagglehub.dataset_download(DATASET))
    except Exception as err:  # network, credentials, quota: kagglehub raises many kinds
        raise FfdError(f"Download with kagglehub failed: {err}\n{manual}") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink() if target.is_symlink() else target.rmdir()
    target.symlink_to(path, target_is_directory=True)
    log.info("CIPLAB downloaded to %s and linked as %s (%d images).", path, target, len(discover(target)))
    return target
