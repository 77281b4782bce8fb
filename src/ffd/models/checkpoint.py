"""ffd checkpoints: written atomically, read safely and checked, for every consumer (train's resume,
eval, predict, export, bench)."""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ffd.errors import FfdError
from ffd.models.module import FakeFaceClassifier

# What Lightning writes into every checkpoint, and what ffd adds.
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "ffd")
# Model settings newer than some checkpoints, and what a checkpoint without one was trained with.
ADDED_SETTINGS: dict[str, Any] = {"embedding": "pooled", "residual": None, "abstain": None}


def run_folder(ckpt_path: str | Path) -> Path:
    """The training run folder a checkpoint was saved in (``<run>/checkpoints/<file>.ckpt``)."""
    return Path(ckpt_path).resolve().parent.parent


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded without executing pickled code and checked to be ffd's.

    Raises:
        FfdError: the path is missing or a folder, the file is truncated or not a PyTorch
            checkpoint, it holds pickled code, or it is not one ffd.train wrote.
    """
    path = Path(path)
    if path.is_dir():
        raise FfdError(
            f"Checkpoint {path} is a folder: pass a .ckpt file in it, e.g. "
            f"ckpt_path={path}/checkpoints/last.ckpt (or one of its epoch*.ckpt)."
        )
    if not path.is_file():
        raise FfdError(
            f"Checkpoint {path} does not exist. Pass ckpt_path=outputs/train/<run>/checkpoints/<file>.ckpt"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory comes last
        with path.open("rb") as fh:
            head = fh.read(16)
        raise FfdError(
            f"{path} is not a PyTorch checkpoint: it is truncated or another kind of file "
            f"({path.stat().st_size:,} bytes, starting {head!r}). Use a checkpoint ffd.train wrote."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors differ by file
        reason = str(err).splitlines()[0][:300]
        raise FfdError(
            f"{path} can't be loaded safely ({type(err).__name__}: {reason}). ffd loads only weights, "
            "never pickled code: use a checkpoint ffd.train wrote."
        ) from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise FfdError(
            f"{path} is not an ffd checkpoint (it lacks {', '.join(missing)}): train one with ffd.train."
        )
    return raw


def load_checkpoint(path: str | Path) -> FakeFaceClassifier:
    """An ffd checkpoint's model (see ``read_checkpoint``), in eval mode on the CPU."""
    saved = read_checkpoint(path)["hyper_parameters"]
    older = {k: v for k, v in ADDED_SETTINGS.items() if k not in saved}
    # The checkpoint holds every weight: building the model must not fetch pretrained ones
    # (timm's would need the network, or a weights_file of the training machine).
    model = FakeFaceClassifier.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, pretrained=False, weights_file=None, **older
    )
    return model.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on local disks: a checkpoint appears under its
    name only when complete (temporary file in the same folder, fsync, rename). A full disk is a
    message and leaves no partial file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        data = io.BytesIO()  # serialised first: torch.save onto a full disk fails without saying so
        torch.save(checkpoint, data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(data.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise FfdError(
                    f"The disk of {path.parent} is full: checkpoint {path.name} was not written. Free space "
                    "there, or run with hydra.run.dir=/other/disk/run (or paths.log_dir=/other/disk)."
                ) from err
            raise
