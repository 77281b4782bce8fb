"""Exporting a checkpoint for deployment (``python -m ffd.export ckpt_path=CKPT``).

Writes into the export run folder: ``model.onnx`` (dynamic batch, checked with
onnx.checker), ``model.torchscript.pt``, ``model.safetensors`` and
``model.json``, the model card. Each graph maps normalized images
(N, 3, size, size) to class probabilities (real, fake) and carries what a
consumer needs to feed it (preprocessing, class names, the validation-chosen
threshold). Every export is run once on a batch of the training run's test
images and compared with the checkpoint; a difference above ``parity_atol``
is an error, and the measured differences go into the model card.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ffd.data.batches import batches, load_items
from ffd.data.facts import CLASS_NAMES
from ffd.data.records import read_manifest
from ffd.errors import ConfigError, FfdError
from ffd.files import sha256_file
from ffd.inference.scorers import ONNX_METADATA_KEY, OnnxScorer
from ffd.models.checkpoint import load_checkpoint, run_folder
from ffd.models.module import FakeFaceClassifier
from ffd.provenance import provenance

log = logging.getLogger(__name__)
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}


class Probabilities(nn.Module):
    """The exported graph: normalized images -> class probabilities (real, fake)."""

    def __init__(self, model: FakeFaceClassifier) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).softmax(-1)


def sample_batch(ckpt_path: Path, preprocess: dict[str, Any], n: int) -> tuple[torch.Tensor, str]:
    """n test images of the checkpoint's run, preprocessed; random inputs if the run has too few left."""
    manifest = run_folder(ckpt_path) / "manifest.csv"
    test = (
        [r.path for r in read_manifest(manifest) if r.ok and r.split == "test"] if manifest.exists() else []
    )
    # Files moved or deleted since training are skipped (they come as items without an image).
    for _, x in batches(load_items(test, preprocess), preprocess, n):
        if x is not None and len(x) == n:
            return x, "test images"
        break
    log.warning("Fewer than %d readable test images next to %s: checking on random inputs.", n, ckpt_path)
    size = preprocess["size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), "random inputs"


def export_onnx(net: nn.Module, x: torch.Tensor, path: Path, metadata: str, opset: int) -> OnnxScorer:
    """ONNX via torch.export: dynamic batch, weights inside the one file, checked, loaded in onnxruntime."""
    import onnx

    for name in ("onnx_ir", "onnxscript"):  # per-pass INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            net, (x,), input_names=["image"], output_names=["probs"],
            dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
        )  # fmt: skip
    assert program is not None  # no file name given: the exporter returns the program
    graph = program.model_proto
    graph.metadata_props.add(key=ONNX_METADATA_KEY, value=metadata)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return OnnxScorer(path)


def export_torchscript(net: nn.Module, x: torch.Tensor, path: Path, metadata: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        traced = torch.jit.trace(net, x)
        torch.jit.save(traced, str(path), _extra_files={f"{ONNX_METADATA_KEY}.json": metadata})
        return torch.jit.load(str(path))


def export_safetensors(net: nn.Module, path: Path, metadata: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={ONNX_METADATA_KEY: metadata})


Runner = Callable[[torch.Tensor], torch.Tensor]


def check_parity(name: str, run: Runner, x: torch.Tensor, reference: torch.Tensor, atol: float) -> float:
    """Max |difference| from the checkpoint's probabilities; an error above atol or for a fixed batch size."""
    with torch.no_grad():
        diff = float((run(x) - reference).abs().max())
        odd = run(x[:3])  # another batch size: the batch dimension must be dynamic
    if odd.shape != (3, len(CLASS_NAMES)):
        raise FfdError(f"{name} returned shape {tuple(odd.shape)} for a batch of 3 images.")
    if diff > atol:
        raise FfdError(f"{name} differs from the checkpoint by {diff:.2e} (> parity_atol={atol}).")
    return diff


def run_facts(ckpt_path: Path) -> dict[str, Any]:
    """What the training run folder says about the model: manifest hash, metrics at export time."""
    run = run_folder(ckpt_path)
    manifest, metrics = run / "manifest.csv", run / "metrics.json"
    scores = json.loads(metrics.read_text()) if metrics.exists() else {}
    return {
        "training_run": str(run),
        "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
        # The run's final metrics: val of the last epoch, test of the best checkpoint (the exported one
        # when it is the best); the last epoch's val/threshold is not this checkpoint's.
        "metrics": {
            k: v
            for k, v in sorted(scores.items())
            if k.startswith(("val/", "test/")) and k != "val/threshold"
        }
        or None,
    }


def export(cfg: DictConfig) -> dict[str, Any]:
    """``python -m ffd.export``: write ``cfg.formats`` and model.json; return the model card."""
    if unknown := set(cfg.formats) - set(FILES):
        raise ConfigError(f"formats: unknown {sorted(unknown)}; choose from {list(FILES)}.")
    if cfg.parity_images < 3:
        raise ConfigError(
            f"parity_images={cfg.parity_images}: use 3 or more (a batch of 3 checks the batch size)."
        )
    ckpt_path = Path(cfg.ckpt_path)
    model = load_checkpoint(ckpt_path).float()
    model.backbone.to(memory_format=torch.contiguous_format)  # plain NCHW for every runtime
    net = Probabilities(model).eval()
    x, source = sample_batch(ckpt_path, model.preprocess, cfg.parity_images)
    with torch.no_grad():
        reference = net(x)
    hp = model.hparams
    inference: dict[str, Any] = {
        "preprocess": model.preprocess, "class_names": list(CLASS_NAMES), "threshold": model.threshold
    }  # fmt: skip
    metadata = json.dumps(inference)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    checks: dict[str, Runner] = {}
    for fmt in cfg.formats:
        path = out / FILES[fmt]
        if fmt == "onnx":
            checks[fmt] = export_onnx(net, x, path, metadata, cfg.opset).probs
        elif fmt == "torchscript":
            checks[fmt] = export_torchscript(net, x, path, metadata)
        else:
            export_safetensors(net, path, metadata)
    parity = {f: check_parity(FILES[f], run, x, reference, cfg.parity_atol) for f, run in checks.items()}
    log.info("Max |p - p_checkpoint| on %d %s: %s", len(x), source, parity)

    card: dict[str, Any] = {
        "name": out.name,
        "backbone": hp["backbone"],
        "head": hp["head"],
        "freeze": hp["freeze"],
        "input": {"shape": ["batch", 3, model.preprocess["size"], model.preprocess["size"]], **inference},
        "output": "probs: (batch, 2) softmax probabilities in class_names order; p_fake = probs[:, 1]",
        "threshold_method": hp["threshold_method"],
        **run_facts(ckpt_path),
        "checkpoint": {"path": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path)},
        "parity": {"max_abs_diff": parity, "images": len(x), "on": source},
        "files": {FILES[f]: {"sha256": sha256_file(out / FILES[f])} for f in cfg.formats},
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **provenance(),
    }
    (out / "model.json").write_text(json.dumps(card, indent=2))
    log.info("Exported %s to %s", ", ".join(FILES[f] for f in cfg.formats), out.resolve())
    return card
