"""The data of a training config, made or fetched before training (``ffd data``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from ffd.data.kaggle import download_ciplab
from ffd.data.layouts import as_data_root, data_roots
from ffd.data.synthetic import ensure_synthetic
from ffd.data.synthetic_video import ensure_synthetic_video
from ffd.data.video_datamodule import VideoDataModule
from ffd.errors import FfdError

log = logging.getLogger(__name__)


def prepare_data(cfg: DictConfig) -> Path | list[Path]:
    """The folder ``cfg.data`` trains on, generated (a synthetic set) or downloaded (CIPLAB) if needed; the
    folders of a list ``data.root``, each checked to exist (nothing is fetched for them)."""
    given = cfg.data.root
    if (members := data_roots(as_data_root(given))) is not None:
        if missing := [m.path for m in members if not m.path.exists()]:
            raise FfdError(f"data.root lists {missing[0]}, which does not exist.")
        log.info(
            "Data: %d folders, each in a layout ffd reads: %s", len(members), [str(m.path) for m in members]
        )
        return [m.path for m in members]
    root = Path(given)
    videos = issubclass(get_class(cfg.data._target_), VideoDataModule)
    if not cfg.data.synthetic and videos:
        if not root.exists():
            raise FfdError(
                f"data.root={root} does not exist. ffd downloads no video data set: get FaceForensics++, "
                "Celeb-DF or DFDC from their authors and point data.root at the folder."
            )
        return root
    if not cfg.data.synthetic:
        return download_ciplab(root)
    made = (ensure_synthetic_video if videos else ensure_synthetic)(root, **cfg.data.synthetic)
    log.info("Synthetic %s set ready: %s", "video" if videos else "CIPLAB-like", made)
    return made
