"""Training modes: frozen, full and gradual fine-tuning, backbone learning rate, lr schedule."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import TINY, build_model, tiny_model
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from ffd.models.finetune import GradualUnfreeze, backbone_blocks, unfreeze_stages
from ffd.models.module import FakeFaceClassifier
from ffd.provenance import provenance
from ffd.training.fitting import train


def loader(n: int = 8, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=g) * 2, torch.arange(n) % 2)
    return DataLoader(data, batch_size=4)


class Snapshot(L.Callback):
    """The backbone's blocks (their weights and BatchNorm modes) at the end of every epoch."""

    def __init__(self) -> None:
        self.weights: list[list[torch.Tensor]] = []
        self.bn_training: list[list[bool]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        blocks = backbone_blocks(pl_module.backbone)
        self.weights.append(
            [torch.cat([p.detach().flatten() for p in b.parameters()]).clone() for b in blocks]
        )
        bns = [[m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)] for b in blocks]
        self.bn_training.append([all(x) if x else None for x in bns])


def fit(model: FakeFaceClassifier, epochs: int, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(model, loader())
    return trainer


def test_gradual_unfreezes_top_down_on_schedule() -> None:
    torch.manual_seed(0)
    model = tiny_model(input_size=32, freeze="gradual", unfreeze_epochs=[1, 2])
    blocks = backbone_blocks(model.backbone)
    assert len(blocks) == 19  # torchvision MobileNetV2 features
    top, bottom = unfreeze_stages(blocks, 2)
    assert top[0] is blocks[-1] and bottom[-1] is blocks[0]
    before = [torch.cat([p.flatten() for p in b.parameters()]).clone() for b in blocks]
    snap = Snapshot()
    fit(model, 3, snap)
    changed = [[not torch.equal(w, b) for w, b in zip(epoch, before, strict=True)] for epoch in snap.weights]
    n_top = len(top)
    assert not any(changed[0])  # epoch 0: head only
    assert all(changed[1][-n_top:]) and not any(changed[1][:-n_top])  # epoch 1: the top half
    assert all(changed[2])  # epoch 2: everything
    # Frozen blocks keep their BatchNorm statistics (eval mode); unfrozen ones train them.
    assert snap.bn_training[0][-1] is False and snap.bn_training[1][-1] is True
    assert snap.bn_training[1][0] is False and snap.bn_training[2][0] is True


def test_ddp_wraps_a_trainable_backbone_that_gradual_then_freezes() -> None:
    """DDP registers only parameters that need a gradient when it wraps the model (after setup):
    the backbone must need one then, or its gradients are never averaged once it unfreezes
    (tests/test_distributed.py runs it on two processes)."""
    model = tiny_model(input_size=32, freeze="gradual")
    (schedule,) = model.configure_callbacks()
    strategy = DDPStrategy()  # not started: only the keyword arguments it passes DDP are read
    schedule.setup(SimpleNamespace(strategy=strategy), model, "fit")
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert strategy._ddp_kwargs["find_unused_parameters"]  # the frozen backbone gets no gradients
    schedule.on_fit_start(SimpleNamespace(optimizers=[]), model)  # after the wrap
    assert not any(p.requires_grad for p in model.backbone.parameters()) and model.frozen
    # One process: frozen at setup, as before.
    model = tiny_model(input_size=32, freeze="gradual")
    schedule.setup(SimpleNamespace(strategy=None), model, "fit")
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_last_stage_frees_parameters_outside_blocks() -> None:
    """A ViT's cls_token and pos_embed belong to no block; the last stage unfreezes them too."""
    model = build_model(
        "model=timm", "model.backbone=timm:test_vit", "model.pretrained=false", "model.freeze=gradual"
    )
    (schedule,) = [c for c in model.configure_callbacks() if isinstance(c, GradualUnfreeze)]
    schedule.freeze_before_training(model)
    schedule.finetune_function(model, schedule.unfreeze_epochs[-1], None)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_backbone_trains_at_its_own_learning_rate_with_cosine_warmup() -> None:
    model = tiny_model(
        input_size=32, freeze="full", backbone_lr_factor=0.1,
        scheduler={"name": "cosine", "warmup_epochs": 1, "min_lr_factor": 0.01},
    )  # fmt: skip

    class Lrs(L.Callback):
        lrs: list[list[float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    lrs = Lrs()
    fit(model, 4, lrs)  # 2 steps an epoch: warmup over steps 0-1, cosine over 2-7
    head, backbone = zip(*lrs.lrs, strict=True)
    assert head[0] == pytest.approx(0.5e-3) and head[1] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(head[1:], head[2:], strict=False))  # then decays
    assert head[-1] == pytest.approx(0.01e-3)  # min_lr_factor at the last step
    assert [b / h for h, b in zip(head, backbone, strict=True)] == pytest.approx([0.1] * len(head))


def test_scheduler_and_freeze_errors_are_explained() -> None:
    with pytest.raises(ValueError, match="scheduler.name"):
        fit(tiny_model(input_size=32, scheduler={"name": "step"}), 1)
    with pytest.raises(ValueError, match="unfreeze_epochs"):
        fit(tiny_model(input_size=32, freeze="gradual", unfreeze_epochs=[3, 1]), 1)


def test_fine_tuning_run(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    """+experiment=finetune_mobilenet_v2 trains the backbone, on decoded pixels (never the feature cache)."""
    cfg = make_cfg(
        "+experiment=finetune_mobilenet_v2", f"data.root={tiny_synthetic}", *TINY, "data.cache.mode=auto",
        "trainer.max_epochs=3", "model.unfreeze_epochs=[1,2]", "callbacks.progress_bar.refresh_rate=0",
    )  # fmt: skip
    metrics = train(cfg)
    assert "test/auroc" in metrics and "val/auroc_best" in metrics
    assert not (tmp_path / "data" / "cache").exists()  # auto: no feature cache for a backbone that unfreezes
    run = tmp_path / "train"
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert first["hyper_parameters"]["freeze"] == "gradual"
    assert first["hyper_parameters"]["scheduler"]["name"] == "cosine"
    info = json.loads((run / "run_info.json").read_text())
    assert info["git_commit"] == provenance()["git_commit"]  # None outside a git checkout
    assert info["packages"]["timm"] and len(info["manifest_sha256"]) == 64


def test_gradual_fine_tuning_resumes_into_its_stage(tmp_path: Path) -> None:
    """Resumed from its epoch-1 checkpoint (top stage unfrozen), a run ends with the same weights."""

    def model() -> FakeFaceClassifier:
        torch.manual_seed(0)
        return tiny_model(
            input_size=32, freeze="gradual", unfreeze_epochs=[1, 2], backbone_lr_factor=0.1,
            scheduler={"name": "cosine", "warmup_epochs": 1},
        )  # fmt: skip

    def trainer(*callbacks: L.Callback) -> L.Trainer:
        return L.Trainer(
            max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, deterministic=True, callbacks=list(callbacks),
        )  # fmt: skip

    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    whole = model()
    trainer(every_epoch).fit(whole, loader())
    resumed = model()
    trainer(ModelCheckpoint(dirpath=tmp_path / "resumed")).fit(
        resumed, loader(), ckpt_path=tmp_path / "epoch=1.ckpt"
    )
    assert all(p.requires_grad for p in resumed.backbone.parameters())
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
