"""Exporting a checkpoint for deployment (``python -m ffd.export ckpt_path=CKPT``).

Writes into the export run folder: ``model.onnx`` (dynamic batch and image size,
checked with onnx.checker), ``model.torchscript.pt``, ``model.safetensors``,
``model.json`` (the model card) and ``predict_onnx.py`` (a reference consumer that
needs only onnxruntime, numpy and Pillow). Each graph is the shipped model
(``ffd.models.shipped.Probabilities``): decoded uint8 RGB images (N, H, W, 3) ->
calibrated class probabilities (real, fake) and the logit of fake (which decides), with
resizing and normalization inside.
Every export is run on test images of the training run, resized to the model's input size, and
compared with the scores eval and predict give them; a difference above ``parity_atol`` or a
changed label is an error, and the measured differences go into the model card. The images at
their own size are scored too, the resize then inside each graph: its rounding to whole pixel
values can land one level apart where runtimes differ in the last float bit, so that difference
is reported in the card (``parity.own_size``), not held to ``parity_atol``.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ffd.data.decoding import Decoder
from ffd.data.facts import CLASS_NAMES, FAKE, p_fake
from ffd.data.records import read_manifest
from ffd.data.settings import Limits
from ffd.data.transforms import resize_pixels
from ffd.engine.scorers import ONNX_METADATA_KEY, CheckpointScorer, OnnxScorer
from ffd.engine.scoring import score_files
from ffd.errors import ConfigError, FfdError
from ffd.files import sha256_file
from ffd.models.checkpoint import load_checkpoint, run_folder
from ffd.models.shipped import INFERENCE_PRECISION
from ffd.provenance import provenance

log = logging.getLogger(__name__)
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}
CONSUMER = Path(__file__).with_name("predict_onnx.py")


def parity_batch(
    scorer: CheckpointScorer, ckpt_path: Path, n: int, limits: Limits
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """n decoded test images of the checkpoint's run (uint8, N x H x W x 3) and their logits as eval and
    predict score them; random pixels if the run has too few left."""
    manifest = run_folder(ckpt_path) / "manifest.csv"
    test = (
        [r.path for r in read_manifest(manifest) if r.ok and r.split == "test"] if manifest.exists() else []
    )
    # Files moved or deleted since training come as items without an image; a batch holds images of
    # one decoded size: the first full one is taken.
    for batch in score_files(test, scorer.logit, n, Decoder(int(scorer.preprocess["size"]), limits)):
        if batch.images is not None and batch.output is not None and len(batch.images) == n:
            return batch.images, batch.output, "test images"
    log.warning("No %d readable same-size test images next to %s: checking on random pixels.", n, ckpt_path)
    size = int(scorer.preprocess["size"])
    x = torch.randint(
        0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return x, scorer.logit(x), "random pixels"


def export_onnx(net: nn.Module, x: torch.Tensor, path: Path, metadata: str, opset: int) -> OnnxScorer:
    """ONNX via torch.export: dynamic batch and image size, weights inside the one file, checked,
    loaded in onnxruntime."""
    import onnx

    for name in ("onnx_ir", "onnxscript"):  # per-pass INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    dims = [torch.export.Dim(name, min=lo) for name, lo in (("batch", 1), ("height", 8), ("width", 8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            net, (x,), input_names=["image"], output_names=["probs", "logit"],
            dynamic_shapes=(dict(enumerate(dims)),), opset_version=opset, dynamo=True, verbose=False,
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


# An exported file run on uint8 images: (probabilities (N, 2), logit of fake (N,)).
Consumer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parity_gap(
    run: Consumer, x: torch.Tensor, reference: torch.Tensor, threshold_logit: float
) -> tuple[float, int]:
    """Max |p_fake difference| (of both outputs: probs[:, 1] and sigmoid(logit)) from eval's and
    predict's scores (``reference``: their logits), and the labels it changes."""
    with torch.no_grad():
        probs, logit = run(x)
    expected = torch.sigmoid(reference.double())
    diff = max(
        float((p.double() - expected).abs().max()) for p in (probs[:, FAKE], torch.sigmoid(logit.double()))
    )
    return diff, int(((logit >= threshold_logit) != (reference >= threshold_logit)).sum())


def at_model_size(x: torch.Tensor, preprocess: dict[str, Any]) -> torch.Tensor:
    """uint8 images (N, H, W, 3) resized as training and the shipped model resize them."""
    size, mode = int(preprocess["size"]), str(preprocess["interpolation"])
    resized = resize_pixels(x.permute(0, 3, 1, 2).float(), size, mode).to(torch.uint8)
    return resized.permute(0, 2, 3, 1).contiguous()


def check_parity(
    name: str, run: Consumer, x: torch.Tensor, reference: torch.Tensor, threshold_logit: float, atol: float
) -> float:
    """``parity_gap`` on images at the model's input size: an error above atol, for a changed label, or
    for a fixed batch or image size."""
    with torch.no_grad():
        odd = run(x[:3, : x.shape[1] - 5])  # another batch and image size: both must be dynamic
    if (shapes := tuple(tuple(t.shape) for t in odd)) != ((3, len(CLASS_NAMES)), (3,)):
        raise FfdError(f"{name} returned shapes {shapes} for a batch of 3 images.")
    diff, flips = parity_gap(run, x, reference, threshold_logit)
    if diff > atol:
        raise FfdError(f"{name} differs from the checkpoint's scores by {diff:.2e} (> parity_atol={atol}).")
    if flips:
        raise FfdError(
            f"{name} changes the label of {flips} images at the threshold (logit {threshold_logit:.4g})."
        )
    return diff


def card_io(model: Any) -> dict[str, Any]:
    """What a consumer needs to feed the graph and read it: the decode, the tensors, the threshold."""
    size = int(model.preprocess["size"])
    return {
        "decode": {
            "library": "Pillow (reference: predict_onnx.py)",
            "steps": [
                "Image.open(path, formats=['JPEG', 'PNG', 'WEBP', 'BMP', 'TIFF', 'GIF']): other formats "
                "are refused; an MPO opens as the JPEG it is; an animated GIF, WebP or TIFF is read as "
                "its first frame (no seek)",
                f"JPEG (and MPO) only: img.draft('RGB', ({size}, {size})): libjpeg decodes at the smallest"
                f" DCT scale (1/2, 1/4, 1/8) that keeps both sides >= {size}",
                "img.load(); orientation = img.getexif().get(0x0112, 1), taken as 1 if getexif() raises "
                "or the value is not an int from 1 to 8",
                f"Other formats: k = min(width, height) // {size} if min(width, height) >= {2 * size}, "
                "else 1",
                "Modes reduce() cannot average as they are, converted first: '1', 'LA' -> 'L'; 'La' -> "
                "'LA' -> 'L'; 'P', 'PA', 'RGBA', 'RGBa' -> 'RGB' (alpha dropped); 'I;16', 'I;16L', "
                "'I;16B', 'I;16N' -> 'I'",
                "k > 1: img.reduce(k): the mean of each k x k box, ceil(width / k) x ceil(height / k)",
                "8 bits: 16-bit greyscale (decoded as 'I;16*'): point(lambda v: v * (1 / 256)) -> "
                "convert('L'); 32-bit 'I' and float 'F': lo, hi = getextrema() of the decoded image "
                "(before reduce), s = 255 / (hi - lo) (0 if hi == lo), point(lambda v: v * s - lo * s) ->"
                " convert('L'); NaN or infinite lo/hi: refused",
                "convert('RGB')",
                "Where a mode is converted or scaled, the three steps above run on bands of k * max(1, "
                "1048576 // (width * k)) rows pasted into one RGB image: the same pixels as on the whole "
                "image",
                "Upright: transpose by the orientation: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 "
                "FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90 (as "
                "ImageOps.exif_transpose)",
                "numpy.asarray(img, uint8): (height, width, 3), RGB",
            ],
        },
        "input": {
            "name": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3], "layout": "NHWC RGB",
            "note": "any size (one size per batch): the graph resizes to the model's input as training "
            "does (antialiased, rounded to whole pixel values) and normalizes",
        },
        "output": {
            "names": ["probs", "logit"], "dtype": "float32", "classes": list(CLASS_NAMES),
            "shapes": {"probs": ["batch", 2], "logit": ["batch"]},
            "p_fake": "probs[:, 1], temperature-scaled (calibrated on the training run's val split)",
            "logit": "the calibrated log-odds of fake, (fake logit - real logit) / temperature: "
                     "label = fake when logit >= threshold_logit (it never saturates as p_fake does)",
        },
        "preprocess": model.preprocess,  # inside the graph: resize (antialiased) to size, then mean/std
        "class_names": list(CLASS_NAMES),
        "threshold": p_fake(model.threshold_logit),  # as p_fake, for people
        "threshold_logit": model.threshold_logit,
        "abstain": model.abstain_band,  # logits in (low, high): "uncertain"; null: always real or fake
        "temperature": model.temperature,
        "precision": INFERENCE_PRECISION,
    }  # fmt: skip


def shortcut_check(run: Path) -> dict[str, Any] | None:
    """The training split's metadata-only baseline (``shortcut.json``), said in the log when it found a
    shortcut: the card carries it to whoever deploys the model."""
    path = run / "shortcut.json"
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    if found.get("shortcut") and not found.get("reencode"):
        log.warning("The training run's data had a shortcut: %s", found["finding"])
    return found


def export(cfg: DictConfig) -> dict[str, Any]:
    """``python -m ffd.export``: write ``cfg.formats``, model.json and predict_onnx.py; return the card."""
    if unknown := set(cfg.formats) - set(FILES):
        raise ConfigError(f"formats: unknown {sorted(unknown)}; choose from {list(FILES)}.")
    if cfg.parity_images < 3:
        raise ConfigError(
            f"parity_images={cfg.parity_images}: use 3 or more (a batch of 3 checks the batch size)."
        )
    ckpt_path = Path(cfg.ckpt_path)
    model = load_checkpoint(ckpt_path)
    model.backbone.to(memory_format=torch.contiguous_format)  # plain NCHW for every runtime
    scorer = CheckpointScorer(model, cfg.runtime, Path(cfg.paths.cache_dir) / "runtimes")  # as eval, predict
    own, own_reference, source = parity_batch(
        scorer, ckpt_path, cfg.parity_images, Limits.from_config(cfg.limits)
    )
    x = at_model_size(own, scorer.preprocess)
    reference = scorer.logit(x)
    net = scorer.net.cpu()
    io, run = card_io(model), run_folder(ckpt_path)
    metadata = json.dumps({**io, "training_run": str(run)})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    checks: dict[str, Consumer] = {}
    for fmt in cfg.formats:
        path = out / FILES[fmt]
        if fmt == "onnx":
            checks[fmt] = export_onnx(net, x, path, metadata, cfg.opset)
        elif fmt == "torchscript":
            checks[fmt] = export_torchscript(net, x, path, metadata)
        else:
            export_safetensors(net, path, metadata)
    threshold, atol = model.threshold_logit, cfg.parity_atol
    parity = {f: check_parity(FILES[f], run, x, reference, threshold, atol) for f, run in checks.items()}
    own_size = {f: parity_gap(run, own, own_reference, threshold) for f, run in checks.items()}
    log.info("Max |p_fake - p_fake of eval/predict| on %d %s at the model's size: %s; at their own size "
             "(max difference, labels changed): %s", len(x), source, parity, own_size)  # fmt: skip
    shutil.copyfile(CONSUMER, out / CONSUMER.name)

    hp = model.hparams
    manifest = run / "manifest.csv"
    card: dict[str, Any] = {
        "name": out.name,
        "backbone": hp["backbone"],
        "head": hp["head"],
        "freeze": hp["freeze"],
        **io,
        "threshold_method": hp["threshold_method"],
        "training_run": str(run),
        "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
        "metrics": model.final_metrics or None,  # this checkpoint's own (val, and test when it was tested)
        "shortcut_check": shortcut_check(run),
        "checkpoint": {"path": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path)},
        "parity": {
            "max_abs_diff": parity,
            "images": len(x),
            "on": source,
            "label_flips": 0,
            "own_size": {FILES[f]: {"max_abs_diff": d, "label_flips": n} for f, (d, n) in own_size.items()},
        },
        "files": {FILES[f]: {"sha256": sha256_file(out / FILES[f])} for f in cfg.formats},
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **provenance(),
    }
    (out / "model.json").write_text(json.dumps(card, indent=2))
    log.info("Exported %s to %s", ", ".join(FILES[f] for f in cfg.formats), out.resolve())
    return card
