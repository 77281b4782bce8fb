"""Scorers: a trained model behind one interface, from an ffd checkpoint or an exported ONNX file.

Both carry the preprocessing they were trained with and the decision threshold
chosen on validation, so every consumer (predict, eval, explain, bench) feeds
them the same way. The ONNX scorer needs onnxruntime only, not Lightning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch

from ffd.data.facts import FAKE
from ffd.errors import FfdError
from ffd.runtime import autocast_dtype, mixed_precision

ONNX_METADATA_KEY = "ffd"  # metadata_props entry: JSON with preprocess, class_names, threshold


class Scorer(Protocol):
    preprocess: dict[str, Any]
    threshold: float

    def p_fake(self, x: torch.Tensor) -> list[float]:
        """Normalized images (N, 3, H, W) -> the probability that each is fake."""
        ...


class CheckpointScorer:
    """An ffd LightningModule, run in the training precision (fp16 on CUDA, bf16 on CPU) or fp32."""

    def __init__(self, model: Any, precision: str) -> None:
        if precision not in ("auto", "32"):
            raise FfdError(f"precision={precision} must be 'auto' (fp16 on CUDA, bf16 on CPU) or '32'.")
        self.model = model
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(self.device).eval()
        self.dtype = autocast_dtype(mixed_precision(self.device.type)) if precision == "auto" else None
        self.preprocess, self.threshold = model.preprocess, model.threshold

    def p_fake(self, x: torch.Tensor) -> list[float]:
        x = x.to(self.device, non_blocking=True)
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, self.dtype or torch.float32, self.dtype is not None),
        ):
            return self.model(x).float().softmax(-1)[:, FAKE].cpu().tolist()


class OnnxScorer:
    """An ``ffd.export`` ONNX model in onnxruntime (fp32; CUDA when onnxruntime has it)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as err:  # onnxruntime raises its own exception types per failure
            raise FfdError(f"{path} is not a loadable ONNX model ({type(err).__name__}: {err}).") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise FfdError(
                f"{path} is not an ffd export (no '{ONNX_METADATA_KEY}' metadata): use ffd.export."
            )
        card = json.loads(meta[ONNX_METADATA_KEY])
        self.preprocess, self.threshold = card["preprocess"], float(card["threshold"])
        self.input_name = self.session.get_inputs()[0].name

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images -> class probabilities (N, 2)."""
        (probs,) = self.session.run(None, {self.input_name: x.float().numpy()})
        return torch.from_numpy(probs)

    def p_fake(self, x: torch.Tensor) -> list[float]:
        return self.probs(x)[:, FAKE].tolist()


def load_scorer(path: str | Path, precision: str = "auto") -> Scorer:
    """A scorer for an ffd checkpoint (``.ckpt``) or an exported ``.onnx`` model."""
    if Path(path).suffix == ".onnx":
        if not Path(path).is_file():
            raise FfdError(f"ONNX model {path} does not exist; make one with python -m ffd.export.")
        return OnnxScorer(path)
    from ffd.models.checkpoint import load_checkpoint  # imports Lightning: only when needed

    return CheckpointScorer(load_checkpoint(path), precision)
