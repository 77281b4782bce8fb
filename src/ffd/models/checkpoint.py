"""Loading ffd checkpoints safely, for every consumer (eval, predict, bench)."""

from __future__ import annotations

from pathlib import Path

import torch

from ffd.errors import FfdError
from ffd.models.module import FakeFaceClassifier


def run_folder(ckpt_path: str | Path) -> Path:
    """The training run folder a checkpoint was saved in (``<run>/checkpoints/<file>.ckpt``)."""
    return Path(ckpt_path).resolve().parent.parent


def load_checkpoint(path: str | Path) -> FakeFaceClassifier:
    """An ffd checkpoint, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FfdError(
            f"Checkpoint {path} does not exist. Pass ckpt_path=outputs/train/<run>/checkpoints/<file>.ckpt"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors differ by file
        raise FfdError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from err
    if not isinstance(raw, dict) or "ffd" not in raw:
        raise FfdError(
            f"{path} is not an ffd checkpoint (it has no 'ffd' section): train one with ffd.train."
        )
    # The checkpoint holds every weight: building the model must not fetch pretrained ones
    # (timm's would need the network, or a weights_file of the training machine).
    model = FakeFaceClassifier.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, pretrained=False, weights_file=None
    )
    return model.eval()
