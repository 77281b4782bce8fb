"""Backbones by name: torchvision and timm trunks, their preprocessing, offline weights errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, build_model
from torch.utils.data import DataLoader, TensorDataset

from ffd.models.backbones import build_backbone as _build_backbone
from ffd.models.checkpoint import load_checkpoint
from ffd.training.fitting import train


def build_backbone(name: str, **kwargs):
    """``build_backbone`` with model/mobilenet_v2.yaml's settings (its flatten head: the map, no residual)
    where a test does not set one."""
    settings = {"pretrained": False, "weights": None, "input_size": None, "weights_file": None,
                "embedding": None, "residual": None, **kwargs}  # fmt: skip
    return _build_backbone(name, **settings)


@pytest.mark.parametrize(
    ("name", "channels", "grid"),
    [("timm:test_efficientnet", 256, 5), ("timm:test_vit", 64, 10), ("timm:test_convnext", 64, 5)],
)
def test_timm_trunks_give_4d_maps_and_their_own_preprocessing(name: str, channels: int, grid: int) -> None:
    trunk, preprocess = build_backbone(name, pretrained=False)
    # timm's pretrained config of these test models: 160 px, bicubic.
    assert preprocess["size"] == 160 and preprocess["interpolation"] == "bicubic"
    assert len(preprocess["mean"]) == len(preprocess["std"]) == 3
    assert trunk(torch.zeros(2, 3, 160, 160)).shape == (2, channels, grid, grid)


def test_vit_tokens_are_laid_back_on_their_grid() -> None:
    """Patch token i sits at row i // 10, column i % 10; the class token is dropped."""
    trunk, _ = build_backbone("timm:test_vit", pretrained=False)
    x = torch.randn(1, 3, 160, 160)
    tokens = trunk.model.forward_features(x)  # (1, 1 + 100, 64)
    fmap = trunk(x)
    torch.testing.assert_close(fmap[0, :, 3, 7], tokens[0, 1 + 3 * 10 + 7])


def test_torchvision_trunk_without_features_is_cut_before_pooling() -> None:
    trunk, preprocess = build_backbone("resnet18", pretrained=False, weights="IMAGENET1K_V1")
    assert preprocess["size"] == 224 and preprocess["interpolation"] == "bilinear"
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    swin, _ = build_backbone("swin_t", pretrained=False)  # NHWC inside: the trunk still gives NCHW
    assert swin(torch.zeros(1, 3, 64, 64)).shape == (1, 768, 2, 2)


def test_head_width_follows_the_backbone_and_checkpoint_carries_timm_preprocessing(tmp_path: Path) -> None:
    model = build_model(
        "model=timm", "model.backbone=timm:test_efficientnet", "model.pretrained=false", "model.head=avgpool"
    )
    assert model.head[-1].in_features == 256 and model.preprocess["size"] == 160
    data = TensorDataset(torch.randn(4, 3, 160, 160), torch.tensor([0, 1, 0, 1]))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    assert raw["ffd"]["preprocess"] == model.preprocess
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    x = torch.randn(2, 3, 160, 160)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    # A checkpoint trained from pretrained weights on another machine loads from its own
    # weights alone: no hub, no weights file of that machine.
    raw["hyper_parameters"] |= {"pretrained": True, "weights_file": "/elsewhere/model.safetensors"}
    torch.save(raw, tmp_path / "elsewhere.ckpt")
    torch.testing.assert_close(load_checkpoint(tmp_path / "elsewhere.ckpt")(x), model(x))


def test_timm_backbone_run(make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    """model=timm trains end to end; eval and predict get timm's preprocessing from the checkpoint."""
    cfg = make_cfg(
        "model=timm", "model.backbone=timm:test_efficientnet", f"data.root={tiny_synthetic}", *TINY,
        "model.input_size=96", "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0",
    )  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["test/auroc"] <= 1 and "val/auroc_best" in metrics
    best = next((tmp_path / "train" / "checkpoints").glob("epoch*.ckpt"))
    model = load_checkpoint(best)
    assert model.hparams["backbone"] == "timm:test_efficientnet"
    assert model.preprocess == {"size": 96, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "interpolation": "bicubic"}  # fmt: skip


@pytest.mark.slow
def test_timm_pretrained_offline_fails_with_a_clear_message(tiny_synthetic: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "ffd.train", "model=timm", "model.backbone=timm:test_efficientnet",
         "model.pretrained=true", f"data.root={tiny_synthetic}", "data=ciplab", "+debug=fdr"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    assert "timm/test_efficientnet.r160_in1k" in output  # which weights
    assert str(tmp_path / "hf" / "hub") in output  # which cache
    assert "model.pretrained=false" in output and "model.weights_file" in output  # how to fix


def test_weights_file_loads_local_timm_weights(tmp_path: Path) -> None:
    source, _ = build_backbone("timm:test_efficientnet", pretrained=False)
    path = tmp_path / "weights.pth"
    torch.save(source.model.state_dict(), path)
    trunk, _ = build_backbone("timm:test_efficientnet", pretrained=True, weights_file=str(path))
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(trunk.eval()(x), source.eval()(x))
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone("timm:test_efficientnet", pretrained=True, weights_file=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="is not timm:test_convnext's weights"):
        build_backbone(
            "timm:test_convnext", pretrained=True, weights_file=str(path)
        )  # another model's weights


def test_unknown_timm_model_is_explained() -> None:
    with pytest.raises(ValueError, match="Unknown timm model"):
        build_backbone("timm:no_such_net", pretrained=False)


def test_embeddings_and_the_npr_residual_wrap_any_trunk() -> None:
    """The pooled embedding of a torchvision trunk is its map's average; timm's is the model's own pooling
    (a ViT's class token), or its pretrained head (``projected``); NPR goes in front of either. Gradual
    unfreezing finds the same blocks through every wrapper, and the cache's fingerprint tells them apart."""
    from ffd.models.backbones import NprResidual
    from ffd.models.encoder import state_fingerprint
    from ffd.models.finetune import backbone_blocks

    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    fmap, _ = build_backbone("resnet18")
    torch.manual_seed(0)
    pooled, _ = build_backbone("resnet18", embedding="pooled")
    torch.testing.assert_close(pooled(x), fmap(x).mean((2, 3)))
    vit, _ = build_backbone("timm:test_vit", input_size=64, embedding="pooled")
    tokens = vit.model.forward_features(x)
    torch.testing.assert_close(vit(x), tokens[:, 0])  # test_vit: class token, no norm after the pooling
    projected, _ = build_backbone("timm:test_vit", input_size=64, embedding="projected")
    assert projected(x).shape == (2, 1000)  # test_vit's pretrained head: 1000 classes (CLIP's: a projection)
    npr, _ = build_backbone("timm:test_vit", input_size=64, residual="npr")
    assert isinstance(npr[0], NprResidual) and npr(x).shape == (2, 64, 4, 4)
    plain, _ = build_backbone("timm:test_vit", input_size=64)
    assert [type(b) for b in backbone_blocks(npr)] == [type(b) for b in backbone_blocks(plain)]
    assert len(backbone_blocks(pooled)) == len(backbone_blocks(fmap)) == 10  # conv1, bn1, 2 per layer
    npr.load_state_dict({f"1.{k}": v for k, v in plain.state_dict().items()})
    assert len({state_fingerprint(m) for m in (fmap, pooled)}) == 2  # same weights, other layers
    assert state_fingerprint(npr) != state_fingerprint(plain)


def test_embedding_choices_that_cannot_work_are_explained() -> None:
    with pytest.raises(
        ValueError, match="torchvision's resnet18 has a classifier there: use model.embedding=pooled"
    ):
        build_backbone("resnet18", embedding="projected")
    with pytest.raises(ValueError, match="has no pretrained head to project its embedding with"):
        build_backbone("timm:vit_small_patch14_dinov2", input_size=28, embedding="projected")
