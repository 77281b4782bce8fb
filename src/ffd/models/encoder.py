"""A frozen backbone as the feature cache and the runtimes see it: the module and what identifies it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Encoder:
    """A frozen backbone and a fingerprint of everything about it that shapes its output."""

    module: nn.Module
    fingerprint: str
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def bound(self) -> float | None:
        """The largest value the trunk can output if it ends in ReLU6 (6.0, as MobileNetV2's), else None."""
        last = [m for m in self.module.modules() if not list(m.children())]
        return 6.0 if last and isinstance(last[-1], nn.ReLU6) else None


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's layers (its ``repr``) and its parameters and buffers (names, shapes, values).

    The layers count: the same weights give other outputs behind other layers without weights (a
    pooled embedding or the map before it, the NPR residual or the image)."""
    h = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
