"""Backbone runtimes: every one gives torch's features, auto picks by measurement and remembers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from torchvision.transforms.v2 import functional as TF

import ffd.engine.runtimes.chooser as chooser
from ffd.data.transforms import rgbx
from ffd.engine.runtimes.chooser import FP32_RTOL, available, candidates, choose_runtime
from ffd.engine.runtimes.runner import Runner, relative_error
from ffd.errors import ConfigError

INSTALLED = [n for n in ("torch", "onnxruntime", "openvino") if available(n)]


@pytest.fixture(scope="module")
def trunk():
    model = tiny_model(pretrained=True).eval()  # pretrained: real features, not a dead trunk
    enc = model.encoder()
    probe = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)
    return enc, probe, enc.module(probe).float()


def choose(trunk, requested: str, folder: Path | None, precision: str = "32-true"):
    enc, probe, _ = trunk
    return choose_runtime(requested, enc.module, enc.fingerprint, enc.memory_format, precision, probe, folder)


@pytest.mark.parametrize("name", INSTALLED)
def test_every_runtime_gives_the_features_torch_gives(trunk, name: str, tmp_path: Path) -> None:
    choice = choose(trunk, name, tmp_path)
    assert choice.runner.name == name and choice.report["chosen"].startswith(name)
    features = choice.runner(trunk[1])
    assert trunk[2].abs().mean() > 0.05
    assert relative_error(features, trunk[2]) <= FP32_RTOL
    # Any batch size, in order: OpenVINO splits a batch into requests (fewer images than streams too).
    for n in (1, 3):
        assert relative_error(choice.runner(trunk[1][-n:]), trunk[2][-n:]) <= FP32_RTOL


@pytest.mark.parametrize("name", INSTALLED)
def test_batches_fed_back_to_back_keep_their_features_and_order(trunk, name: str, tmp_path: Path) -> None:
    """``Runner.map``, as the cache build feeds a runner: OpenVINO starts the next batches before a
    batch is done, and every batch still gets its own features, in order."""
    runner = choose(trunk, name, tmp_path).runner
    _, probe, reference = trunk
    sizes = [8, 1, 5, 2, 8, 3]
    starts = [sum(sizes[:i]) % len(probe) for i in range(len(sizes))]
    batches = [probe.roll(-s, 0)[:n] for s, n in zip(starts, sizes, strict=True)]
    pairs = list(runner.map(iter(batches)))
    assert all(x is b for (x, _), b in zip(pairs, batches, strict=True))
    out = [f for _, f in pairs]
    assert [len(f) for f in out] == sizes
    for f, s, n in zip(out, starts, sizes, strict=True):
        assert relative_error(f, reference.roll(-s, 0)[:n]) <= FP32_RTOL


@pytest.mark.parametrize("name", [n for n in INSTALLED if n != "torch"])
def test_a_request_that_fails_raises_instead_of_hanging(trunk, name: str, tmp_path: Path) -> None:
    """A runtime that runs requests in threads of its own (``Runner.start``) passes their error on."""
    runner = choose(trunk, name, tmp_path).runner
    assert runner.start is not None
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):  # each runtime raises its own type
        list(runner.map(iter([trunk[1], torch.zeros(2, 3, 5, 64)])))  # a batch of the wrong size
    assert relative_error(runner(trunk[1]), trunk[2]) <= FP32_RTOL  # and it still runs after


@pytest.mark.parametrize("name", INSTALLED)
def test_every_runtime_normalizes_pixels_as_torch_does(trunk, name: str, tmp_path: Path) -> None:
    """A runner made with ``pixels`` takes the feature cache's RGBX views and normalizes them itself:
    its features are torch's fp32 features of the views normalized by PixelsIn."""
    enc, _, _ = trunk
    preprocess = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    pixels = rgbx(images)
    choice = choose_runtime(name, enc.module, enc.fingerprint, enc.memory_format, "32-true", pixels, tmp_path,
                            pixels=preprocess)  # fmt: skip
    normalized = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), **preprocess)
    reference = enc.module(normalized).float()
    assert reference.abs().mean() > 0.05
    assert relative_error(choice.runner(pixels), reference) <= FP32_RTOL


def test_auto_measures_once_then_reuses_the_choice(trunk, tmp_path: Path) -> None:
    first = choose(trunk, "auto", tmp_path)
    report = first.report
    assert report["measured_now"] and set(report["measured"]) == {f"{n} 32-true" for n in INSTALLED}
    chosen = report["measured"][report["chosen"]]
    assert chosen["parity"] and chosen["img_per_s"] == max(
        v["img_per_s"] for v in report["measured"].values() if v["parity"]
    )
    (recorded,) = tmp_path.glob("runtime-*.json")
    assert json.loads(recorded.read_text())["chosen"] == report["chosen"]
    again = choose(trunk, "auto", tmp_path)
    assert not again.report["measured_now"] and again.runner.label == first.runner.label
    assert relative_error(again.runner(trunk[1]), trunk[2]) <= FP32_RTOL


def test_a_runtime_failing_parity_is_never_chosen(trunk, monkeypatch: pytest.MonkeyPatch) -> None:
    real = chooser.onnxruntime_runner

    def off(onnx_file: Path) -> Runner:
        runner = real(onnx_file)
        return Runner(runner.name, runner.precision, lambda x: runner.run(x) * 1.01)  # 1 % off

    monkeypatch.setattr(chooser, "onnxruntime_runner", off)
    report = choose(trunk, "auto", None).report
    assert not report["measured"]["onnxruntime 32-true"]["parity"]
    assert not report["chosen"].startswith("onnxruntime")
    with pytest.raises(ConfigError, match="No backbone runtime matches"):
        choose(trunk, "onnxruntime", None)


def test_mixed_precision_accepts_what_is_no_farther_from_fp32_than_torch(trunk) -> None:
    report = choose(trunk, "auto", None, precision="bf16-mixed").report
    torch_error = report["measured"]["torch bf16-mixed"]["rel_error"]
    assert FP32_RTOL < torch_error <= report["tolerance"]  # bf16 rounding is far above fp32's
    assert all(v["parity"] for k, v in report["measured"].items() if "32-true" in k)


def test_bad_settings_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="runtime=tensorrt: choose one of auto, torch"):
        candidates("tensorrt", "32-true", on_cpu=True)
    with pytest.raises(ConfigError, match="runs on the CPU only"):
        candidates("onnxruntime", "16-mixed", on_cpu=False)
    assert candidates("auto", "16-mixed", on_cpu=False) == [("torch", "16-mixed")]
    monkeypatch.setattr(chooser, "available", lambda name: name != "openvino")
    with pytest.raises(ConfigError, match="pip install openvino"):
        candidates("openvino", "32-true", on_cpu=True)
    assert ("openvino", "32-true") not in candidates("auto", "32-true", on_cpu=True)


def test_an_unwritable_runtime_folder_only_costs_the_record(trunk, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    choice = choose(trunk, "auto", tmp_path / "file" / "runtimes")
    assert choice.report["measured_now"] and choice.report["measured"][choice.report["chosen"]]["parity"]


def test_measuring_without_a_folder_leaves_no_files(trunk, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts the exported trunks
    choice = choose(trunk, "auto", None)
    assert not list(tmp_path.iterdir())
    assert relative_error(choice.runner(trunk[1]), trunk[2]) <= FP32_RTOL  # the runner works without them
