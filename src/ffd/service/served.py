"""The model a service scores with: the scorer ``ffd.predict`` uses, its card, and Grad-CAM when the
training checkpoint is at hand."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from PIL import Image

from ffd.data.transforms import resize_transform
from ffd.deploy.exporting import card_io
from ffd.engine.gradcam import grad_cam, overlay
from ffd.engine.scorers import CheckpointScorer, Scorer, load_scorer
from ffd.files import sha256_file
from ffd.models.checkpoint import load_checkpoint
from ffd.models.module import FakeFaceClassifier
from ffd.models.shipped import Preprocess

log = logging.getLogger(__name__)
WINDOWS = re.compile(r"^[A-Za-z]:[\\/]")  # C:\ or C:/


class Explainer:
    """Grad-CAM overlays of the evidence for "fake", on the image as the model sees it (its input size)."""

    def __init__(self, model: FakeFaceClassifier, method: str) -> None:
        self.model, self.method = model.float().eval(), method
        self.device = next(model.parameters()).device
        self.preprocess = Preprocess(model.preprocess).to(self.device)
        self.shown = resize_transform(model.preprocess)

    def overlays(self, images: list[torch.Tensor]) -> list[Image.Image]:
        """One overlay per decoded uint8 image (H, W, 3)."""
        out = []
        for image in images:
            cams, _ = grad_cam(self.model, self.preprocess(image[None].to(self.device)), self.method)
            out.append(overlay(self.shown(image.permute(2, 0, 1)), cams[0].cpu()))
        return out


PATH_KEYS = frozenset({"source", "training_run", "path"})  # card entries that hold a file or folder


def names_only(value: Any, key: str = "") -> Any:
    """A card with every file or folder path (``PATH_KEYS``, and any absolute path) cut to its last
    name: what the service sends never shows where its files are."""
    if isinstance(value, dict):
        return {k: names_only(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [names_only(v) for v in value]
    if isinstance(value, str) and (key in PATH_KEYS or value.startswith(("/", "\\")) or WINDOWS.match(value)):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


def export_card(onnx_path: Path) -> dict[str, Any] | None:
    """The model.json ``ffd.export`` wrote beside an ONNX file, if it is there."""
    card = onnx_path.with_name("model.json")
    return json.loads(card.read_text()) if card.is_file() else None


def training_checkpoint(card: dict[str, Any] | None) -> tuple[FakeFaceClassifier | None, str]:
    """The checkpoint an export was made from, if it is still there unchanged; else why not."""
    if card is None:
        return None, "no model.json beside the ONNX file, so the training checkpoint is unknown"
    path = Path(card["checkpoint"]["path"])  # the reason names the file, not where it is on the server
    if not path.is_file():
        return None, f"the training checkpoint {path.name} is gone"
    if sha256_file(path) != card["checkpoint"]["sha256"]:
        return None, f"the training checkpoint {path.name} changed since the export"
    return load_checkpoint(path), ""


class ServedModel:
    """An ffd checkpoint, an export folder or its model.onnx, loaded once for every request.

    Attributes:
        scorer: What scores (the same object ``ffd.predict`` makes for this path).
        explainer: Grad-CAM, or None when only the ONNX graph is at hand (``explain_note`` says why).
        card: What ``GET /v1/model`` returns.

    Args:
        path: The model.
        cam_method: Grad-CAM's method.
        runtime, runtime_dir: Where a checkpoint's backbone runs (``CheckpointScorer``); chosen at
            start-up on a batch of ``max_batch`` images, the service's largest.
        max_batch: Images per forward pass at most.
    """

    def __init__(
        self,
        path: str | Path,
        cam_method: str,
        runtime: str,
        runtime_dir: Path | None,
        max_batch: int,
    ) -> None:
        self.scorer: Scorer = load_scorer(path, runtime, runtime_dir)
        if isinstance(self.scorer, CheckpointScorer):
            backbone = self.scorer.warm_up(max_batch)  # the runtime chosen now, not on a request
            model, note = self.scorer.model, ""
            hp = model.hparams
            card: dict[str, Any] = {
                "name": Path(path).name, **card_io(model), "backbone": hp["backbone"], "head": hp["head"],
                "training_run": str(self.scorer.training_run), "metrics": model.final_metrics or None,
                "backbone_runtime": backbone,
            }  # fmt: skip
        else:
            onnx = Path(path) / "model.onnx" if Path(path).is_dir() else Path(path)
            found = export_card(onnx)
            model, note = training_checkpoint(found)
            card = found or {"name": onnx.name, "threshold": self.scorer.threshold}
        self.explainer = Explainer(model, cam_method) if model is not None else None
        self.explain_note = note and f"No heatmaps: {note}."
        if note:
            log.warning("%s", self.explain_note)
        self.card = names_only({**card, "source": str(path), "explain": self.explainer is not None})
        self.size = int(self.scorer.preprocess["size"])
