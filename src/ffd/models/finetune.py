"""Fine-tuning: which backbone parameters train when, and the learning-rate schedule.

``freeze=gradual`` trains the head on a frozen backbone first, then unfreezes the
backbone from the top (the blocks nearest the head) down, one stage per epoch in
``unfreeze_epochs``. It is Lightning's ``BaseFinetuning`` callback; the model
returns it from ``configure_callbacks``, so a checkpoint resumes into the right
stage with nothing in the config.

Every backbone parameter is in the optimizer from the start, in its own group at
``lr * backbone_lr_factor``: a frozen parameter has no gradient, so the optimizer
skips it until it is unfrozen, and the learning-rate scheduler covers every group.
(``BaseFinetuning.unfreeze_and_add_param_group`` adds groups later, which a
scheduler built at the start would not see.)

Under DDP the backbone is registered with DDP from the start: DDP averages the
gradients only of the parameters that need one when it wraps the model, so a
backbone frozen at that moment would later train on each rank's own gradients
(Lightning issue #20340). ``GradualUnfreeze`` lets DDP wrap a trainable backbone,
freezes it right after, and tells DDP to expect parameters without gradients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from ffd.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine",)


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, input to output, that hold parameters.

    A trunk is usually a sequence of blocks (torchvision ``features``) or holds one
    (timm's ``blocks``, a ResNet's ``layer1``...): plain containers among its children are
    opened one level, so that a schedule can unfreeze block by block. Wrappers (a timm trunk
    around its model, a pooled embedding, the NPR residual in front) are looked through.
    """
    module = backbone
    # A wrapper: all its parameters sit in one child, which has layers of its own.
    while len(inner := [c for c in module.children() if _has_parameters(c)]) == 1 and _has_layers(inner[0]):
        module = inner[0]
    blocks: list[nn.Module] = []
    for child in module.children():
        if type(child) in (nn.Sequential, nn.ModuleList):  # not subclasses: those are layers
            blocks.extend(child.children())
        else:
            blocks.append(child)
    return [b for b in blocks if _has_parameters(b)]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _has_layers(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def unfreeze_stages(blocks: Sequence[nn.Module], stages: int) -> list[list[nn.Module]]:
    """Split ``blocks`` into ``stages`` groups, the first group being the top (output end)."""
    top_down = list(reversed(blocks))
    size = math.ceil(len(top_down) / stages)
    return [top_down[i * size : (i + 1) * size] for i in range(stages) if top_down[i * size : (i + 1) * size]]


class GradualUnfreeze(BaseFinetuning):
    """Freeze the backbone before training; unfreeze stage ``i`` at epoch ``unfreeze_epochs[i]``.

    BatchNorm layers of frozen blocks stay in eval mode (their statistics don't move);
    an unfrozen block's BatchNorm trains like the rest of it.

    Args:
        unfreeze_epochs: Increasing epochs (0-based); stage 0 = the top blocks.
    """

    def __init__(self, unfreeze_epochs: Sequence[int]) -> None:
        super().__init__()
        epochs = [int(e) for e in unfreeze_epochs]
        if not epochs or epochs != sorted(epochs) or epochs[0] < 0:
            raise ConfigError(
                f"model.unfreeze_epochs must be a non-empty increasing list of epochs >= 0, got {epochs}."
            )
        self.unfreeze_epochs = epochs
        self._freeze_when_wrapped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # freezes the backbone
        if stage == "fit" and isinstance(trainer.strategy, DDPStrategy):
            # DDP wraps the model after this hook and registers only parameters that need a gradient:
            # wrap it trainable, freeze it on fit start. While frozen, it gets no gradients: DDP must
            # look for unused parameters (Lightning passes these keyword arguments to DDP).
            pl_module.backbone.requires_grad_(True)
            trainer.strategy._ddp_kwargs["find_unused_parameters"] = True
            self._freeze_when_wrapped = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._freeze_when_wrapped:
            self.freeze_before_training(pl_module)
            self._freeze_when_wrapped = False
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone, train_bn=False)
        pl_module.frozen = True

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        stages = unfreeze_stages(backbone_blocks(pl_module.backbone), len(self.unfreeze_epochs))
        for at, modules in zip(self.unfreeze_epochs, stages, strict=False):
            # ">=": a run resumed after a stage's epoch must unfreeze it again.
            if epoch >= at and not all(p.requires_grad for m in modules for p in m.parameters()):
                self.make_trainable(modules)
                log.info("Epoch %d: unfroze %d backbone blocks", epoch, len(modules))
        if epoch >= self.unfreeze_epochs[-1]:
            # The last stage frees all, parameters outside any block too (a ViT's cls_token, pos_embed).
            self.make_trainable(pl_module.backbone)
        pl_module.frozen = not any(p.requires_grad for p in pl_module.backbone.parameters())
        pl_module.train(pl_module.training)  # re-apply which BatchNorm layers train


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_factor: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to each group's lr, then cosine decay to ``min_lr_factor`` x lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps + 1) / max(1, total_steps - warmup_steps))
        return min_lr_factor + (1 - min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler(
    spec: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, trainer: L.Trainer
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` entry for ``model.scheduler`` (None = constant lr).

    ``{name: cosine, warmup_epochs: 1, min_lr_factor: 0.01}``: steps every batch.
    """
    if not spec:
        return None
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SCHEDULERS:
        raise ConfigError(
            f"model.scheduler.name must be one of {SCHEDULERS} (or scheduler=null), got {name!r}."
        )
    warmup_epochs = float(spec.pop("warmup_epochs", 0))
    min_lr_factor = float(spec.pop("min_lr_factor", 0.0))
    if spec:
        raise ConfigError(f"Unknown model.scheduler settings {sorted(spec)} for {name}.")
    total = int(trainer.estimated_stepping_batches)
    per_epoch = total / max(1, trainer.max_epochs or 1)
    warmup = min(total, round(warmup_epochs * per_epoch))
    scheduler = cosine_with_warmup(optimizer, total, warmup, min_lr_factor)
    return {"scheduler": scheduler, "interval": "step"}
