"""ffd.export: every format and the reference consumer agree with eval; the model card; ONNX eval."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import LIMITS
from safetensors.torch import load_file

from ffd.deploy.exporting import export, parity_batch
from ffd.engine.scorers import CheckpointScorer, load_scorer
from ffd.errors import ConfigError, FfdError
from ffd.evaluation.evaluating import evaluate
from ffd.files import sha256_file
from ffd.models.checkpoint import load_checkpoint
from ffd.models.shipped import Probabilities
from ffd.provenance import provenance
from ffd.service.client import running_service


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``python -m ffd.export`` of the trained run's checkpoint, every format: (export folder, card)."""
    ckpt, _ = trained
    out = tmp_path_factory.mktemp("export")
    cmd = [sys.executable, "-m", "ffd.export", f"ckpt_path={ckpt}", f"hydra.run.dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    return out, json.loads((out / "model.json").read_text())


def csv_scores(text: str) -> dict[str, tuple[float, str]]:
    """Each path's p_fake and label (eval's predictions.csv calls it ``predicted``; its ``label`` is the
    true one)."""
    return {
        r["path"]: (float(r["p_fake"]), r["predicted"] if "predicted" in r else r["label"])
        for r in csv.DictReader(io.StringIO(text))
    }


TORCHSCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from predict_onnx import decode
model = torch.jit.load(sys.argv[1] + "/model.torchscript.pt")
threshold_logit = float(sys.argv[3])
for path in sys.argv[4:]:
    probs, logit = model(torch.from_numpy(decode(path, int(sys.argv[2])))[None])
    print(f"{path},{float(probs[0, 1])!r},{'fake' if float(logit[0]) >= threshold_logit else 'real'}")
"""


@pytest.mark.slow
def test_every_consumer_gives_evals_p_fake(make_cfg, trained, exported, tmp_path: Path) -> None:
    """train -> eval -> export -> the checkpoint, ONNX and TorchScript files, the reference consumer and
    the HTTP service, each in a fresh process, score the test split as eval did: to 1e-4, no label
    changed."""
    ckpt, _ = trained
    out, card = exported
    evaluate(make_cfg(f"ckpt_path={ckpt}", "bootstrap=0", config="eval"))
    expected = csv_scores((tmp_path / "eval" / "predictions.csv").read_text())
    paths = sorted(expected)
    listing = tmp_path / "test.txt"
    listing.write_text("\n".join(paths))
    got = {}
    for name, model in (("predict checkpoint", ckpt), ("predict onnx", out / "model.onnx")):
        cmd = [sys.executable, "-m", "ffd.predict", f"ckpt_path={model}", f"input={listing}",
               f"output={tmp_path / name}.csv", f"hydra.run.dir={tmp_path / name}"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)
        got[name] = csv_scores((tmp_path / f"{name}.csv").read_text())
    consumer = [sys.executable, str(out / "predict_onnx.py"), *paths]
    got["predict_onnx.py"] = csv_scores(
        subprocess.run(consumer, check=True, capture_output=True, text=True).stdout
    )
    size = str(card["preprocess"]["size"])
    script = [sys.executable, "-c", TORCHSCRIPT, str(out), size, str(card["threshold_logit"]), *paths]
    lines = subprocess.run(script, check=True, capture_output=True, text=True).stdout
    got["torchscript"] = csv_scores("path,p_fake,label\n" + lines)
    with running_service(out, f"hydra.run.dir={tmp_path / 'serve'}", log=tmp_path / "serve.log") as running:
        url = running.url
        got["service on the export folder"] = {}
        for path in paths:
            answer = httpx.post(f"{url}/v1/predict", files={"file": (path, Path(path).read_bytes())})
            row = answer.json()["results"][0]
            got["service on the export folder"][path] = (row["p_fake"], row["label"])
        assert httpx.get(f"{url}/v1/model").json()["explain"]  # heatmaps from the training checkpoint
    service, onnx = got["service on the export folder"], got["predict onnx"]
    assert max(abs(service[p][0] - onnx[p][0]) for p in paths) <= 1e-6  # the same runtime: the same numbers
    reference = torch.tensor([expected[p][0] for p in paths], dtype=torch.float64)
    assert reference.std() > 1e-3  # scores that differ from image to image, by far more than the tolerance
    labels = [expected[p][1] for p in paths]
    assert len(set(labels)) == 2  # both labels given: a flipped decision would show
    for name, scores in got.items():
        p_fake = torch.tensor([scores[p][0] for p in paths], dtype=torch.float64)
        torch.testing.assert_close(p_fake, reference, atol=1e-4, rtol=0, msg=name)
        assert [scores[p][1] for p in paths] == labels, name


def test_export_files_and_safetensors(trained, exported) -> None:
    ckpt, _ = trained
    out, card = exported
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    scorer = CheckpointScorer(load_checkpoint(ckpt), "torch", None)
    x, logit, source = parity_batch(scorer, ckpt, 12, LIMITS)
    assert source == "test images" and x.dtype == torch.uint8 and x.shape[0] == 12 and x.shape[-1] == 3
    expected = scorer.net.cpu()(x)
    torch.testing.assert_close(expected[1], logit, atol=1e-6, rtol=0)
    torch.testing.assert_close(expected[0][:, 1], torch.sigmoid(logit), atol=1e-6, rtol=0)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, logits = session.run(None, {"image": x[:5, :-7].numpy()})  # another batch and image size
    assert probs.shape == (5, 2) and logits.shape == (5,)
    # The safetensors weights rebuild the same model from a fresh, randomly initialised one.
    fresh = Probabilities(load_checkpoint(ckpt)).eval()
    for p in fresh.parameters():
        p.data.normal_()
    fresh.load_state_dict(load_file(out / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=1e-6, rtol=0)
    assert max(card["parity"]["max_abs_diff"].values()) < 1e-4 and card["parity"]["label_flips"] == 0
    own = card["parity"]["own_size"]  # each graph resizing the images itself: reported, not held to 1e-4
    assert set(own) == {"model.onnx", "model.torchscript.pt"} and all(
        v["max_abs_diff"] < 1e-2 for v in own.values()
    )


def test_model_card(trained, exported) -> None:
    ckpt, _ = trained
    out, card = exported
    raw = torch.load(ckpt, weights_only=True)
    assert card["backbone"] == "mobilenet_v2" and card["head"] == "flatten"
    assert card["preprocess"] == raw["ffd"]["preprocess"] and card["precision"] == "32-true"
    assert card["input"]["name"] == "image" and card["input"]["dtype"] == "uint8"
    assert card["input"]["shape"] == ["batch", "height", "width", 3] and card["output"]["names"] == [
        "probs",
        "logit",
    ]
    assert card["class_names"] == ["real", "fake"]
    assert card["threshold"] == raw["ffd"]["threshold"] and card["temperature"] == raw["ffd"]["temperature"]
    assert card["threshold_logit"] == raw["ffd"]["threshold_logit"]
    run = ckpt.parent.parent
    assert card["manifest_sha256"] == sha256_file(run / "manifest.csv")
    # The exported checkpoint's own figures: those metrics.json reports for the run's best checkpoint.
    metrics = json.loads((run / "metrics.json").read_text())
    assert card["metrics"] == raw["ffd"]["metrics"]
    for key in ("val/auroc", "val/threshold", "test/auroc", "test/acc", "test/ece"):
        assert card["metrics"][key] == metrics[key], key
    assert card["ffd"] and card["packages"]["torch"] == torch.__version__.split("+")[0]
    assert card["git_commit"] == provenance()["git_commit"]  # None outside a git checkout
    for name, facts in card["files"].items():
        assert sha256_file(out / name) == facts["sha256"]
    # The ONNX file carries what predict needs, so it works on its own.
    meta = json.loads({p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}["ffd"])
    assert meta["preprocess"] == card["preprocess"] and meta["training_run"] == str(run)


def test_eval_of_an_exported_model_finds_its_run(make_cfg, trained, exported) -> None:
    ckpt, metrics = trained
    out, _ = exported
    report = evaluate(make_cfg(f"ckpt_path={out / 'model.onnx'}", "bootstrap=0", config="eval"))
    assert report["auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-4)


def test_foreign_onnx_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(FfdError, match="not a loadable ONNX model"):
        load_scorer(tmp_path / "junk.onnx", "torch", None)
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(FfdError, match="not an ffd export"):
        load_scorer(tmp_path / "plain.onnx", "torch", None)
    with pytest.raises(FfdError, match="does not exist"):
        load_scorer(tmp_path / "missing.onnx", "torch", None)


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
