"""The detectors from the literature (conf/experiment/{univfd,dinov2_probe,clip_layernorm,npr}), each on a
tiny random-init model of its family: train -> eval -> export -> predict on the ONNX file; the embedding
head, freeze=layernorm and the NPR residual; the message when a recipe's weights are missing."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import huggingface_hub
import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY, build_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ffd.data.facts import p_fake
from ffd.deploy.exporting import export
from ffd.deploy.predicting import predict_files
from ffd.errors import ConfigError
from ffd.evaluation.evaluating import evaluate
from ffd.models.backbones import NprResidual
from ffd.models.pretrained import WeightsUnavailableError
from ffd.training.fitting import train

# Each recipe's backbone, replaced by a tiny random-init model of its family (a ViT, a ResNet).
TINY_BACKBONES = {
    "univfd": "timm:test_vit",
    "dinov2_probe": "timm:test_vit",
    "clip_layernorm": "timm:test_vit",
    "npr": "timm:resnet10t",
}


# A random-init model scores every image nearly alike: its head's weights x10 at the start of training
# spread the scores far beyond the parity tolerance.
SPREAD = ["+callbacks.spread._target_=conftest.OverconfidentHead", "+callbacks.spread.factor=10"]


def recipe_model(recipe: str, *overrides: str):
    """The recipe's model on its tiny backbone, random init, 64 px."""
    return build_model(
        f"+experiment={recipe}", f"model.backbone={TINY_BACKBONES[recipe]}", "model.pretrained=false",
        "model.input_size=64", *overrides,
    )  # fmt: skip


def scores_by_path(path: Path) -> dict[str, tuple[float, str]]:
    """(p_fake, label) of each path of eval's predictions.csv or predict's CSV."""
    with path.open() as fh:
        return {r["path"]: (float(r["p_fake"]), r.get("predicted") or r["label"]) for r in csv.DictReader(fh)}


def uncalibrated(ckpt: Path) -> None:
    """Set the checkpoint's temperature to 1 (its threshold to the same scale). A random-init model learns
    nothing from 32 images, and calibration rightly flattens its scores (temperature at its cap): every
    p_fake ~0.5, too alike to compare consumers on."""
    raw = torch.load(ckpt, weights_only=True)
    threshold_logit = raw["ffd"]["threshold_logit"] * raw["ffd"]["temperature"]
    raw["ffd"] |= {
        "temperature": 1.0,
        "threshold_logit": threshold_logit,
        "threshold": p_fake(threshold_logit),
    }
    torch.save(raw, ckpt)


@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param("univfd", marks=pytest.mark.slow),
        pytest.param("dinov2_probe", marks=pytest.mark.slow),
        pytest.param("clip_layernorm", marks=pytest.mark.slow),
        pytest.param("npr", marks=pytest.mark.slow),
    ],
)
def test_recipe_round_trip(recipe: str, make_cfg, tiny_synthetic: Path, tmp_path: Path) -> None:
    """train -> eval -> export -> predict on the ONNX file: the ONNX model gives every test image eval's
    p_fake to 1e-4 and the same label; the export's own parity check agrees."""
    # runtime=torch: the backbone in the checkpoint's own graph, without measuring the other runtimes
    metrics = train(make_cfg(
        f"+experiment={recipe}", f"model.backbone={TINY_BACKBONES[recipe]}", f"data.root={tiny_synthetic}",
        *TINY, *SPREAD, "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0", "runtime=torch",
    ))  # fmt: skip
    assert 0 <= metrics["test/auroc"] <= 1
    ckpt = next((tmp_path / "train" / "checkpoints").glob("epoch*.ckpt"))
    uncalibrated(ckpt)
    features = list((tmp_path / "data" / "cache").glob("features-*/train.npy"))
    if recipe in ("univfd", "dinov2_probe"):  # a frozen trunk: the feature cache, one vector per view
        (cached,) = features
        n, views, width = np.load(cached, mmap_mode="r").shape
        assert views == 4 and width == (1000 if recipe == "univfd" else 64)  # test_vit: 1000 head, 64 token
    else:  # the backbone trains: no feature cache
        assert not features
    evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=0", "runtime=torch", config="eval"))
    expected = scores_by_path(tmp_path / "eval" / "predictions.csv")
    card = export(make_cfg(f"ckpt_path={ckpt}", "formats=[onnx]", "runtime=torch", "parity_images=4",
                           config="export"))  # fmt: skip
    assert card["parity"]["label_flips"] == 0 and max(card["parity"]["max_abs_diff"].values()) < 1e-4
    paths = sorted(expected)
    (tmp_path / "test.txt").write_text("\n".join(paths))
    onnx, out = tmp_path / "export" / "model.onnx", tmp_path / "onnx.csv"
    predict_files(make_cfg(f"ckpt_path={onnx}", f"input={tmp_path / 'test.txt'}", f"output={out}",
                           config="predict"))  # fmt: skip
    got = scores_by_path(out)
    reference = torch.tensor([expected[p][0] for p in paths], dtype=torch.float64)
    assert reference.std() > 1e-3  # scores that differ from image to image, by far more than the tolerance
    onnx_p_fake = torch.tensor([got[p][0] for p in paths], dtype=torch.float64)
    torch.testing.assert_close(onnx_p_fake, reference, atol=1e-4, rtol=0)
    assert [got[p][1] for p in paths] == [expected[p][1] for p in paths]


def test_embedding_head_is_one_linear_layer_on_the_backbones_own_embedding() -> None:
    probe = recipe_model("dinov2_probe")
    assert [type(m) for m in probe.head] == [nn.Linear]
    assert probe.head[-1].in_features == 64  # test_vit's class token
    x = torch.randn(2, 3, 64, 64)
    vit = probe.backbone.model
    torch.testing.assert_close(probe.backbone(x), vit.forward_head(vit.forward_features(x), pre_logits=True))
    # univfd: the model's pretrained head stays (CLIP's projection; test_vit's is a 1000-class layer)
    univfd = recipe_model("univfd")
    assert univfd.head[-1].in_features == univfd.backbone.model.num_classes == 1000
    assert univfd.encoder() is not None and probe.encoder().fingerprint != univfd.encoder().fingerprint
    # A torchvision trunk's embedding is its map's average; CLIP's projection only timm models have.
    seed = build_model("model.pretrained=false", "model.input_size=64", "model.head=embedding")
    assert seed.head[-1].in_features == 1280 and seed.backbone(x).shape == (2, 1280)
    with pytest.raises(ConfigError, match="model.embedding=projected takes a timm model's pretrained head"):
        build_model("model.pretrained=false", "model.head=embedding", "model.embedding=projected")


def test_layernorm_mode_trains_only_layernorms_and_the_head(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = recipe_model("clip_layernorm")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    norms = {f"backbone.{n}.{w}" for n, m in model.backbone.named_modules() if isinstance(m, nn.LayerNorm)
             for w in ("weight", "bias")}  # fmt: skip
    assert trainable == norms | {"head.0.weight", "head.0.bias"} and len(norms) == 2 * (2 * 6 + 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = TensorDataset(torch.randn(8, 3, 64, 64), torch.tensor([0, 1] * 4))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with caplog.at_level(logging.INFO, logger="ffd.models.module"):
        trainer.fit(model, DataLoader(data, batch_size=4))
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved == trainable
    trains = sum(model.get_parameter(n).numel() for n in trainable)
    total = sum(p.numel() for p in model.parameters())
    assert f"({100 * trains / total:.3g} % of the model's)" in caplog.text
    with pytest.raises(ConfigError, match="LayerNorm layers, and mobilenet_v2 has none"):
        build_model("model.pretrained=false", "model.freeze=layernorm")


def test_npr_residual_is_the_models_first_op() -> None:
    """Each pixel minus the top-left pixel of its 2x2 block, scaled by 2/3: zero on an image made of
    2x2 blocks, at any size (odd too)."""
    x = torch.randn(2, 3, 7, 9)
    top_left = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :7, :9]
    torch.testing.assert_close(NprResidual()(x), (x - top_left) * 2 / 3)
    blocks = torch.randn(1, 3, 4, 5).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert NprResidual()(blocks).abs().max() == 0
    model = recipe_model("npr")
    assert isinstance(model.backbone[0], NprResidual) and model.encoder() is None  # it trains: no cache
    assert model.hparams["freeze"] == "full" and all(p.requires_grad for p in model.parameters())


def test_missing_weights_are_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A recipe's pretrained weights, offline and not cached: which file, where ffd looked, the fixes."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("+experiment=dinov2_probe", "model.input_size=28")
    message = str(err.value)
    assert "timm/vit_base_patch14_dinov2.lvd142m" in message and str(tmp_path / "hub") in message
    assert "model.weights_file=" in message and "model.pretrained=false" in message
