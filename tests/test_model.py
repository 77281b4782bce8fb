from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_model
from torch.utils.data import DataLoader, TensorDataset

from ffd.models.module import FakeFaceClassifier


def test_output_shape_and_head_width() -> None:
    model = tiny_model().eval()
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 2)
    assert model.head[1].in_features == 1280 * 2 * 2  # flatten keeps the 2x2 map at 64 px
    assert tiny_model(head="avgpool").head[-1].in_features == 1280
    assert model.preprocess == {
        "size": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }


def test_frozen_backbone_and_bn_stats_stay_head_learns() -> None:
    torch.manual_seed(0)
    model = tiny_model(optimizer={"lr": 1e-2})
    model.train()
    assert not model.backbone.training and model.head.training
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # incl. BN running stats
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    optimizer = model.configure_optimizers()
    for _ in range(3):
        x, y = torch.randn(8, 3, 64, 64) * 3 + 1, torch.randint(0, 2, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(head[k], v) for k, v in model.head.state_dict().items())
    assert all(p.requires_grad for p in optimizer.param_groups[0]["params"])
    assert len(optimizer.param_groups[0]["params"]) == 2  # head weight and bias only


def test_full_finetune_trains_backbone() -> None:
    model = tiny_model(freeze="full")
    model.train()
    assert model.backbone.training
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_checkpoint_loads_without_hydra_and_holds_no_pickled_code(tmp_path: Path) -> None:
    model = tiny_model(optimizer={"lr": 3e-4})
    data = TensorDataset(torch.randn(8, 3, 64, 64), torch.randint(0, 2, (8,)))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(data, batch_size=4))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled callables or modules
    assert raw["hyper_parameters"]["optimizer"] == {"_target_": "torch.optim.adam.Adam", "lr": 3e-4}
    assert raw["ffd"]["preprocess"]["size"] == 64 and raw["ffd"]["class_names"] == ["real", "fake"]
    loaded = FakeFaceClassifier.load_from_checkpoint(path, weights_only=True).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert isinstance(loaded.configure_optimizers(), torch.optim.Adam)


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="model.freeze='half' is not valid"):
        tiny_model(freeze="half")
    with pytest.raises(ValueError, match="Unknown torchvision backbone"):
        tiny_model(backbone="not_a_net")
    with pytest.raises(ValueError, match="has no weights"):
        tiny_model(weights="IMAGENET9K")
    with pytest.raises(ValueError, match="model.head=.mlp. is not valid"):
        tiny_model(head="mlp")
    with pytest.raises(ValueError, match="model.embedding=.cls. is not valid: .* pooled, projected"):
        tiny_model(head="embedding", embedding="cls")
    with pytest.raises(ValueError, match="model.residual=.srm. is not valid: it must be one of npr"):
        tiny_model(residual="srm")


def test_checkpoint_older_than_the_embedding_and_residual_settings_loads(tmp_path: Path) -> None:
    """A checkpoint written before model.embedding and model.residual existed loads as what it was: no
    residual, and no embedding head."""
    from ffd.models.checkpoint import ADDED_SETTINGS, load_checkpoint

    model = tiny_model()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert set(ADDED_SETTINGS) <= set(raw["hyper_parameters"])
    for key in ADDED_SETTINGS:
        del raw["hyper_parameters"][key]
    torch.save(raw, tmp_path / "older.ckpt")
    loaded = load_checkpoint(tmp_path / "older.ckpt")
    assert loaded.hparams["residual"] is None and loaded.hparams["head"] == "flatten"
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
