"""Feature and pixel caches: correct, keyed, reused, and equivalent to the uncached path."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_datamodule, tiny_model
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ffd.data.datamodule import FaceDataModule
from ffd.data.records import Record
from ffd.data.transforms import apply_views, batch_views, draw_views
from ffd.engine.feature_cache import _scale, feature_key
from ffd.engine.runtimes.runner import PixelsIn
from ffd.errors import ConfigError, FfdError
from ffd.models.encoder import Encoder
from ffd.models.module import FakeFaceClassifier
from ffd.training.fitting import train

NO_AUGMENT = {"hflip": 0, "vflip": 0, "rotation": 0}
SEED_AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rotation": 20}


def make_dm(
    root: Path, model: FakeFaceClassifier, cache_dir: Path, *overrides: str, **kwargs
) -> FaceDataModule:
    settings = ["data.cache.mode=features", "data.cache.views=3", f"data.cache.dir={cache_dir}", *overrides]
    dm = build_datamodule(root, model, *settings, **kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def model() -> FakeFaceClassifier:
    # Pretrained: a random-init trunk in eval mode outputs (nearly) all zeros, which would hide errors.
    return tiny_model(pretrained=True).eval()


def fresh_features(model: FakeFaceClassifier, dm: FaceDataModule, split: str) -> torch.Tensor:
    plain = build_datamodule(dm.root, model, "data.cache.mode=none", augment=dm.augment)
    plain.setup()
    x = torch.stack([plain.datasets[split][i][0] for i in range(len(plain.datasets[split]))])
    return model.features(x).float()


def test_cached_features_equal_fresh_ones(tiny_synthetic: Path, model, tmp_path: Path) -> None:
    dm = make_dm(tiny_synthetic, model, tmp_path, augment=NO_AUGMENT)
    cached = torch.from_numpy(np.asarray(dm.datasets["val"].features, dtype=np.float32))
    fresh = fresh_features(model, dm, "val")
    # fp16 storage: relative rounding error <= 2^-11.
    assert fresh.abs().mean() > 0.1  # real features, not a dead trunk
    torch.testing.assert_close(cached[:, 0], fresh, rtol=1e-3, atol=1e-3)
    # Without augmentation the one training view is the plain image.
    train_views = torch.from_numpy(np.asarray(dm.datasets["train"].features, dtype=np.float32))
    assert train_views.shape[1] == 1
    torch.testing.assert_close(train_views[:, 0], fresh_features(model, dm, "train"), rtol=1e-3, atol=1e-3)
    item = dm.datasets["train"][0]
    assert item["features"].shape == (1280, 2, 2) and item["label"] in (0, 1)


def test_augmented_views_differ(tiny_synthetic: Path, model, tmp_path: Path) -> None:
    dm = make_dm(tiny_synthetic, model, tmp_path, augment=SEED_AUGMENT)
    views = np.asarray(dm.datasets["train"].features, dtype=np.float32)
    assert views.shape[1] == 3
    for i in range(len(views)):
        assert not np.array_equal(views[i, 0], views[i, 1]) and not np.array_equal(views[i, 1], views[i, 2])


def test_forensic_views_are_made_one_by_one_and_cached(tiny_synthetic: Path, model, tmp_path: Path) -> None:
    """JPEG re-saves have no batched form: those views take the per-view path, into the same cache."""
    forensic = {**NO_AUGMENT, "jpeg": 1.0}
    dm = make_dm(tiny_synthetic, model, tmp_path / "a", augment=forensic)
    plain = make_dm(tiny_synthetic, model, tmp_path / "b", augment=NO_AUGMENT)
    views = np.asarray(dm.datasets["train"].features, dtype=np.float32)
    assert views.shape[1] == 3 and not np.array_equal(views[:, 0], views[:, 1])  # a random quality each
    assert np.abs(views[:, 0] - np.asarray(plain.datasets["train"].features)[:, 0]).mean() > 1e-3
    # val is not augmented (each build chose its runtime by measurement: fp16-rounding close)
    val, plain_val = dm.datasets["val"].features, plain.datasets["val"].features
    np.testing.assert_allclose(val, plain_val, rtol=1e-3, atol=1e-3)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tiny_synthetic: Path, model, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    make_dm(data, model, tmp_path / "cache")
    folders = list((tmp_path / "cache").glob("features-*[!k]"))  # beside each: its lock file
    assert len(folders) == 1
    stamp = (folders[0] / "train.npy").stat().st_mtime_ns
    make_dm(data, model, tmp_path / "cache")
    assert (folders[0] / "train.npy").stat().st_mtime_ns == stamp  # reused
    image = next((data / "real_and_fake_face" / "training_real").iterdir())
    with Image.open(image) as img:
        edited = img.copy()
    edited.putpixel((300, 300), (255, 0, 0))  # a kept file's content changes: nothing is dropped
    edited.save(image, "JPEG", quality=95)
    dm = make_dm(data, model, tmp_path / "cache")
    assert sum(r.ok for r in dm.records) == 32
    assert len(list((tmp_path / "cache").glob("features-*[!k]"))) == 2  # new content, new key


def test_key_covers_everything_that_changes_features() -> None:
    enc = Encoder(torch.nn.Identity(), "mobilenet_v2:IMAGENET1K_V1:224:abc")
    settings = {"preprocess": {"size": 224, "mean": [0.5] * 3}, "augment": {"hflip": 0.5}, "views": 8}
    rows = {
        "train": ([Record("/a.jpg", 0, "x", sha256="1")], None, 1),
        "val": ([Record("/b.jpg", 1, "x", sha256="2")], None, 1),
    }
    key = feature_key(enc, settings, rows)
    assert key == feature_key(enc, settings, rows)
    other_weights = dataclasses.replace(enc, fingerprint="mobilenet_v2:IMAGENET1K_V1:224:abd")
    changed = [
        feature_key(other_weights, settings, rows),
        feature_key(enc, {**settings, "preprocess": {"size": 160, "mean": [0.5] * 3}}, rows),
        feature_key(enc, {**settings, "augment": {"hflip": 0.0}}, rows),
        feature_key(enc, {**settings, "views": 4}, rows),
        feature_key(enc, settings, {**rows, "val": ([Record("/b.jpg", 1, "x", sha256="3")], None, 1)}),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_backbone_fingerprint_follows_weights(model) -> None:
    before = model.encoder().fingerprint
    assert tiny_model().encoder().fingerprint != before
    assert tiny_model(pretrained=True).encoder().fingerprint == before
    assert tiny_model(input_size=96).encoder().fingerprint.split(":")[2] == "96"


def test_feature_cache_refused_for_a_training_backbone(tiny_synthetic: Path, tmp_path: Path) -> None:
    full = tiny_model(freeze="full")
    assert full.encoder() is None
    with pytest.raises(FfdError, match="frozen backbone.*data.cache.mode=pixels"):
        build_datamodule(tiny_synthetic, full, "data.cache.mode=features", f"data.cache.dir={tmp_path}")
    assert build_datamodule(tiny_synthetic, full, f"data.cache.dir={tmp_path}").cache == "none"  # auto


def test_pixel_cache_serves_the_same_tensors(tiny_synthetic: Path, model) -> None:
    plain = build_datamodule(tiny_synthetic, model, "data.cache.mode=none")
    pixels = build_datamodule(tiny_synthetic, model, "data.cache.mode=pixels")
    plain.setup()
    pixels.setup()
    for i in range(len(plain.datasets["test"])):
        a, b = plain.datasets["test"][i], pixels.datasets["test"][i]
        assert a[1] == b[1]
        torch.testing.assert_close(a[0], b[0])


def test_cached_and_uncached_training_agree(make_cfg, tiny_synthetic: Path) -> None:
    """Same seed, no augmentation, one view, fp32: both paths see the same inputs in the same order.

    The only difference is fp16 storage of the features (relative error <= 2^-11), so
    losses agree to ~1e-3 and accuracies to within one borderline image.
    """
    common = [
        "data=ciplab",
        f"data.root={tiny_synthetic}",
        "model.input_size=64",
        "data.loader.num_workers=0",
        "data.cache.views=1",
        "data.augment.hflip=0",
        "data.augment.vflip=0",
        "data.augment.rotation=0",
        "trainer.max_epochs=3",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "~callbacks",
        "data.loader.batch_size=8",
    ]
    results = {}
    for cache in ("features", "none"):
        cfg = make_cfg(*common, f"data.cache.mode={cache}")
        cfg.logger = None
        results[cache] = train(cfg)
    cached, uncached = results["features"], results["none"]
    assert cached.keys() == uncached.keys()
    for k in cached:
        if k.endswith(("loss", "temperature")):
            assert cached[k] == pytest.approx(uncached[k], rel=1e-2, abs=1e-3), k
        else:
            assert abs(cached[k] - uncached[k]) <= 0.1, k


def test_empty_split_is_refused_before_any_cache_is_built(
    tiny_synthetic: Path, model, tmp_path: Path
) -> None:
    with pytest.raises(FfdError, match="test split is empty"):
        make_dm(tiny_synthetic, model, tmp_path, split={"test_fraction": 0.0})
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_decode_setting_reaches_the_cache_key(tiny_synthetic: Path, model, tmp_path: Path) -> None:
    draft = make_dm(tiny_synthetic, model, tmp_path)
    full = make_dm(tiny_synthetic, model, tmp_path, "data.loader.decode_draft=false")
    assert draft.decode_size == 64 and full.decode_size is None
    assert len(list(tmp_path.glob("features-*/meta.json"))) == 2


def test_batched_views_are_torchvisions_flips_and_rotations() -> None:
    """apply_views on a batch = torchvision's flip/rotate (nearest, zero fill) image by image, as
    RGBX pixels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 40, 56), dtype=torch.uint8, generator=g)  # not square: aspect matters
    params = {
        "hflip": torch.tensor([0, 1, 0, 1, 0, 0]).bool(),
        "vflip": torch.tensor([0, 0, 1, 1, 0, 1]).bool(),
        "angle": torch.tensor([0.0, 5, -5, 17.3, -20, 90]),
    }
    out = apply_views(x, params, 1)
    assert out.shape == (6, 40, 56, 4) and out.dtype == torch.uint8 and not out[..., 3].any()
    for i in range(len(x)):
        ref = TF.horizontal_flip(x[i]) if params["hflip"][i] else x[i]
        ref = TF.vertical_flip(ref) if params["vflip"][i] else ref
        ref = TF.rotate(ref, float(params["angle"][i]), interpolation=TF.InterpolationMode.NEAREST)
        assert (out[i, ..., :3].permute(2, 0, 1) == ref).float().mean() > 0.999


def test_batch_views_normalized_by_the_runner_are_view_transforms() -> None:
    """batch_views through PixelsIn = view_transform's steps (flips, rotation with zero fill, then
    normalization)."""
    preprocess = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    pixels = batch_views(x, 4, SEED_AUGMENT, torch.Generator().manual_seed(5))
    out = PixelsIn(preprocess, torch.contiguous_format)(pixels)
    params = draw_views(8, SEED_AUGMENT, torch.Generator().manual_seed(5))
    assert params["angle"].abs().min() > 0.5  # every view is rotated: its corners are fill
    for j in range(8):
        ref = TF.horizontal_flip(x[j // 4]) if params["hflip"][j] else x[j // 4]
        ref = TF.vertical_flip(ref) if params["vflip"][j] else ref
        ref = TF.rotate(ref, float(params["angle"][j]), interpolation=TF.InterpolationMode.NEAREST)
        ref = TF.normalize(TF.to_dtype(ref, torch.float32, scale=True), **preprocess)
        assert ((out[j] - ref).abs() < 1e-5).float().mean() > 0.999


def test_batched_views_draw_view_transforms_distribution() -> None:
    drawn = draw_views(20_000, SEED_AUGMENT, torch.Generator().manual_seed(1))
    for flip in ("hflip", "vflip"):
        assert abs(drawn[flip].float().mean() - 0.5) < 0.02
    angle = drawn["angle"]
    assert angle.abs().max() <= 20 and angle.abs().max() > 19.9 and abs(angle.mean()) < 0.3
    assert abs((angle.abs() < 10).float().mean() - 0.5) < 0.02  # uniform, as RandomRotation draws
    plain = draw_views(10, NO_AUGMENT, torch.Generator())
    assert not plain["hflip"].any() and not plain["vflip"].any() and not plain["angle"].any()


def test_uint8_features_are_the_float16_ones_within_half_a_step(
    tiny_synthetic: Path, model, tmp_path
) -> None:
    fp16 = make_dm(tiny_synthetic, model, tmp_path / "a", augment=NO_AUGMENT)
    uint8 = make_dm(tiny_synthetic, model, tmp_path / "b", "data.cache.dtype=uint8", augment=NO_AUGMENT)
    assert uint8.datasets["val"].features.dtype == np.uint8
    assert uint8.datasets["val"].features.nbytes * 2 == fp16.datasets["val"].features.nbytes
    for i in range(len(fp16.datasets["val"])):
        a, b = fp16.datasets["val"][i]["features"], uint8.datasets["val"][i]["features"]
        assert (a - b).abs().max() <= 6 / 255 / 2 + 4e-3  # half a quantization step (+ fp16 rounding)


def test_uint8_needs_bounded_features(tiny_synthetic: Path, tmp_path: Path) -> None:
    assert tiny_model().encoder().bound == 6.0  # MobileNetV2's trunk ends in ReLU6
    assert Encoder(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU()), "x").bound is None
    with pytest.raises(ConfigError, match="dtype=uint8 needs a backbone whose features are bounded"):
        _scale("uint8", None)
