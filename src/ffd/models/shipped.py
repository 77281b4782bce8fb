"""The model that ships: decoded pixels in, calibrated probabilities out, one graph for every consumer.

``Probabilities`` is what eval, predict, explain, the export's parity check and every
exported file run: uint8 RGB images as decoded (N, H, W, 3), any size, are resized as
training resizes them (``ffd.data.transforms.resize_pixels``: antialiased, rounded to whole
pixel values), normalized, scored by the backbone and head in fp32, and turned into
temperature-scaled softmax probabilities and the logit of fake (its log-odds, which ranks and
decides: it never saturates where fp32 probabilities reach exactly 1.0).
Exported to ONNX or TorchScript, the same graph needs nothing but a decoder in front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ffd import rules
from ffd.data.facts import FAKE, REAL
from ffd.data.transforms import resize_pixels
from ffd.errors import ConfigError, FfdError
from ffd.models.module import INFERENCE_PRECISION, FakeFaceClassifier
from ffd.runtime import autocast_dtype

__all__ = ["INFERENCE_PRECISION", "Preprocess", "Probabilities", "calibrated", "inference_settings"]

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def inference_settings(
    precision: str, device: str, cuda_available: bool
) -> tuple[torch.device, torch.dtype | None]:
    """Where a model runs and its autocast dtype (None: none, full fp32).

    The dtype is the model's own recorded inference precision (``checkpoint["ffd"]["precision"]``,
    the model card's ``precision``) on every device: a GPU runs an fp32 model in fp32, not in
    fp16 because CUDA is there, so it gives the probabilities the checkpoint was calibrated and
    evaluated with.

    Args:
        precision: The model's inference precision (``32-true``, ``16-mixed``, ``bf16-mixed``).
        device: ``auto`` (CUDA when there is a GPU, else the CPU), ``cpu`` or ``cuda``.
        cuda_available: ``torch.cuda.is_available()``.
    """
    rules.check("device", device)
    if device == "cuda" and not cuda_available:
        raise ConfigError("device=cuda, but torch sees no CUDA GPU here: use device=auto or device=cpu.")
    if precision not in PRECISIONS:
        raise FfdError(f"The model records inference precision {precision!r}; ffd knows {PRECISIONS}.")
    on_gpu = device == "cuda" or (device == "auto" and cuda_available)
    return torch.device("cuda" if on_gpu else "cpu"), autocast_dtype(precision)


class Preprocess(nn.Module):
    """Decoded uint8 RGB (N, H, W, 3), any size -> the model's normalized input (N, 3, size, size)."""

    def __init__(self, preprocess: Mapping[str, Any]) -> None:
        super().__init__()
        self.size, self.mode = int(preprocess["size"]), str(preprocess["interpolation"])
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Contiguous NCHW throughout (the uint8 copy is the cheap one): the resize runs faster than on
        # channels-last floats, and the runtimes take the result without another copy.
        x = resize_pixels(images.permute(0, 3, 1, 2).contiguous().float(), self.size, self.mode)
        return x.sub_(self.mean).div_(self.std)  # in place: the same numbers, no new tensors


def calibrated(logits: torch.Tensor, temperature: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncalibrated logits (N, 2) at a temperature -> (probabilities (N, 2), logit of fake (N,))."""
    scaled = logits / temperature
    return scaled.softmax(-1), scaled[:, FAKE] - scaled[:, REAL]


class Probabilities(nn.Module):
    """Decoded uint8 RGB (N, H, W, 3) -> calibrated class probabilities (N, 2): (p_real, p_fake), and the
    calibrated logit of fake (N,): (fake logit - real logit) / temperature."""

    def __init__(self, model: FakeFaceClassifier) -> None:
        super().__init__()
        self.preprocess = Preprocess(model.preprocess)
        self.backbone, self.head = model.backbone, model.head
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor(float(model.temperature)))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits (N, 2), what temperature scaling is fitted on."""
        return self.head(self.backbone(self.preprocess(images)))

    def calibrated(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated logits (N, 2) -> (probabilities (N, 2), logit of fake (N,)), temperature-scaled."""
        return calibrated(logits, self.temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.calibrated(self.logits(images))
