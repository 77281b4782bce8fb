"""ffd.export: ONNX/TorchScript/safetensors parity with the checkpoint, the model card, ONNX predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import compose_run
from safetensors.torch import load_file

from ffd.data.records import read_manifest
from ffd.errors import ConfigError, FfdError
from ffd.files import sha256_file
from ffd.inference.export import Probabilities, export, sample_batch
from ffd.inference.predict import predict
from ffd.inference.scorers import CheckpointScorer, load_scorer
from ffd.models.checkpoint import load_checkpoint
from ffd.provenance import provenance


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The trained run's checkpoint exported in every format: (export folder, model card)."""
    ckpt, _ = trained
    out = tmp_path_factory.mktemp("export")
    card = export(compose_run("export", [f"ckpt_path={ckpt}"], out, out))
    return out, card


def test_exports_match_the_checkpoint(trained, exported) -> None:
    ckpt, _ = trained
    out, card = exported
    model = load_checkpoint(ckpt).float()
    x, source = sample_batch(ckpt, model.preprocess, 12)
    assert source == "test images" and len(x) == 12
    with torch.no_grad():
        expected = Probabilities(model).eval()(x)

    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)
    (five,) = session.run(None, {"image": x[:5].numpy()})  # dynamic batch
    assert five.shape == (5, 2)

    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, atol=1e-4, rtol=0)

    # The safetensors weights rebuild the same model from a fresh, randomly initialised one.
    fresh = Probabilities(load_checkpoint(ckpt)).eval()
    for p in fresh.parameters():
        p.data.normal_()
    fresh.load_state_dict(load_file(out / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.float()(x), expected, atol=1e-6, rtol=0)
    assert max(card["parity"]["max_abs_diff"].values()) < 1e-4


def test_model_card(trained, exported) -> None:
    ckpt, metrics = trained
    out, card = exported
    assert json.loads((out / "model.json").read_text()) == card
    raw = torch.load(ckpt, weights_only=True)
    assert card["backbone"] == "mobilenet_v2" and card["head"] == "flatten"
    assert card["input"]["preprocess"] == raw["ffd"]["preprocess"]
    assert card["input"]["shape"] == ["batch", 3, 64, 64]
    assert card["input"]["class_names"] == ["real", "fake"]
    assert card["input"]["threshold"] == pytest.approx(raw["ffd"]["threshold"])
    run = ckpt.parent.parent
    assert card["manifest_sha256"] == sha256_file(run / "manifest.csv")
    assert card["metrics"]["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert card["ffd"] and card["packages"]["torch"] == torch.__version__.split("+")[0]
    assert card["git_commit"] == provenance()["git_commit"]  # None outside a git checkout
    for name, facts in card["files"].items():
        assert sha256_file(out / name) == facts["sha256"]
    # The ONNX file carries what predict needs, so it works on its own.
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["ffd"])["preprocess"] == card["input"]["preprocess"]


def test_predict_from_onnx_equals_the_checkpoint(trained, exported) -> None:
    ckpt, _ = trained
    out, _ = exported
    files = [Path(r.path) for r in read_manifest(ckpt.parent.parent / "manifest.csv") if r.split == "test"]
    onnx_rows = list(predict(load_scorer(out / "model.onnx"), files, batch_size=32))
    ckpt_rows = list(predict(CheckpointScorer(load_checkpoint(ckpt), precision="32"), files, batch_size=32))
    got, expected = (torch.tensor([r["p_fake"] for r in rows]) for rows in (onnx_rows, ckpt_rows))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in ckpt_rows]


def test_foreign_onnx_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(FfdError, match="not a loadable ONNX model"):
        load_scorer(tmp_path / "junk.onnx")
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(FfdError, match="not an ffd export"):
        load_scorer(tmp_path / "plain.onnx")
    with pytest.raises(FfdError, match="does not exist"):
        load_scorer(tmp_path / "missing.onnx")


def test_unknown_format_is_refused(make_cfg, trained) -> None:
    ckpt, _ = trained
    with pytest.raises(ConfigError, match="unknown \\['pickle'\\]"):
        export(make_cfg(f"ckpt_path={ckpt}", "formats=[onnx,pickle]", config="export"))
    with pytest.raises(ConfigError, match="parity_images=2"):
        export(make_cfg(f"ckpt_path={ckpt}", "parity_images=2", config="export"))


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    for module, extra in (("ffd.export", []), ("ffd.explain", [f"input={tmp_path}"])):
        cmd = [sys.executable, "-m", module, f"ckpt_path={missing}", f"hydra.run.dir={tmp_path}", *extra]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 2, module
        assert "does not exist" in result.stderr + result.stdout and "Traceback" not in result.stderr
