"""The trunk in torch itself, at the precision asked for (autocast), on its own device."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ffd.engine.runtimes.runner import PixelsIn, Runner
from ffd.runtime import autocast_dtype


def torch_runner(
    module: nn.Module, precision: str, memory_format: torch.memory_format, pixels: Mapping | None = None
) -> Runner:
    """``module`` as a Runner; with ``pixels`` (the model's mean and std) it takes RGBX pixels."""
    device = next(module.parameters()).device
    dtype = autocast_dtype(precision)
    if pixels is not None:
        module = nn.Sequential(PixelsIn(pixels, memory_format).to(device), module)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        x = x if pixels is not None else x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
            return module(x).float()

    return Runner("torch", precision, run)
