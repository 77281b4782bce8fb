"""Scorers: a trained model behind one interface, from an ffd checkpoint or an exported ONNX file.

Both take decoded uint8 RGB images (N, H, W, 3) and run the same graph
(``ffd.models.shipped.Probabilities``: resize, normalize, model, temperature, in
fp32) to each image's logit of fake (calibrated log-odds; p_fake is its sigmoid), and
carry the decision threshold on it chosen on validation, so every consumer (predict,
eval, explain, bench) gets the same logit, p_fake and label for the same file. The
ONNX scorer needs onnxruntime only, not Lightning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ffd.data.facts import p_fake
from ffd.engine.runtimes.chooser import candidates, choose_runtime
from ffd.engine.runtimes.runner import Runner
from ffd.errors import FfdError

ONNX_METADATA_KEY = "ffd"  # metadata_props entry: the card's input facts (see export.card_io), training_run


@dataclass
class Started:
    """A batch on its way through a model (``Scorer.start_logit``): ``trunk`` resolves once the runtime
    is done with it (at once where the runtime works in the caller's thread), and ``finish`` turns
    what it resolved to into the batch's logits (in the model's thread)."""

    trunk: Future[Any]
    finish: Callable[[Any], torch.Tensor]


def at_once(logit: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], Started]:
    """``logit`` as a ``start_logit``: the batch is scored as it starts."""

    def start(images: torch.Tensor) -> Started:
        done: Future[torch.Tensor] = Future()
        done.set_result(logit(images))
        return Started(done, lambda logits: logits)

    return start


class Scorer(Protocol):
    preprocess: dict[str, Any]
    threshold_logit: float  # logit >= threshold_logit: fake
    threshold: float  # the same threshold as p_fake, for people
    abstain_band: dict[str, Any] | None  # logits in (low, high): "uncertain" (model.abstain); None: none
    temperature: float
    training_run: Path | None  # the training run folder the model came from (its manifest.csv)

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 RGB images (N, H, W, 3) -> each one's calibrated logit of fake (N,), fp32."""
        ...

    def start_logit(self, images: torch.Tensor) -> Started:
        """``logit`` in two steps, for a caller that starts the next batch while the runtime has this
        one; ``in_flight`` batches at once keep the runtime busy (1: it works in the caller's thread)."""
        ...

    @property
    def in_flight(self) -> int: ...


class CheckpointScorer:
    """An ffd checkpoint's model as it ships (``Probabilities``, fp32), on CUDA when there is one.

    Args:
        model: The checkpoint's ``FakeFaceClassifier``.
        runtime: Where the backbone runs (``ffd.engine.runtimes``): ``torch`` (the graph as is), or
            ``auto``/``onnxruntime``/``openvino``: the trunk in the fastest runtime that matches
            fp32 (measured on the first batch, the choice kept in ``runtime_dir``); preprocessing
            and head stay in torch.
        runtime_dir: Where the measured choice and the exported trunk are kept (None: nowhere).
    """

    def __init__(self, model: Any, runtime: str, runtime_dir: Path | None) -> None:
        from ffd.models.shipped import Probabilities  # imports Lightning: only for checkpoints

        self.model = model
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":  # fp32 means fp32: TF32 matmuls would not match the CPU exports
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.net = Probabilities(model.float()).to(self.device).eval()
        self.preprocess, self.temperature = model.preprocess, model.temperature
        self.threshold_logit, self.abstain_band = model.threshold_logit, model.abstain_band
        self.threshold = p_fake(self.threshold_logit)
        self.training_run: Path | None = None
        self.runtime, self.runtime_dir = runtime, runtime_dir
        self.precision = str(model.inference_precision)  # what the model was calibrated in (fp32)
        candidates(runtime, self.precision, self.device.type == "cpu")  # a bad setting fails now
        self.runner: Runner | None = None  # chosen on the first batch
        self.runtime_report: dict[str, Any] | None = None

    def raw_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 RGB (N, H, W, 3) -> uncalibrated fp32 logits (N, 2), on the CPU."""
        with torch.no_grad():
            images = images.to(self.device, non_blocking=True)
            if self.runtime == "torch":
                return self.net.logits(images).float().cpu()
            x = self.net.preprocess(images)
            if self.runner is None:
                self.runner = self._choose(x)
            return self._head(self.runner(x))

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._calibrated(self.raw_logits(images))

    def start_logit(self, images: torch.Tensor) -> Started:
        if self.runner is None or self.runner.start is None:
            return at_once(self.logit)(images)
        with torch.no_grad():
            x = self.net.preprocess(images.to(self.device, non_blocking=True))
        return Started(self.runner.start(x), lambda features: self._calibrated(self._head(features)))

    @property
    def in_flight(self) -> int:
        return 2 if self.runner is not None and self.runner.start is not None else 1

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.head(features.to(self.device)).float().cpu()

    def _calibrated(self, raw_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.calibrated(raw_logits.to(self.device))[1].cpu()

    def warm_up(self, batch: int) -> str:
        """Choose the backbone's runtime now (else the first batch does), on ``batch`` random images
        of the input size; where the backbone runs (``onnxruntime 32-true``)."""
        size = int(self.preprocess["size"])
        noise = torch.Generator().manual_seed(0)
        self.raw_logits(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=noise))
        return self.runtime_report["chosen"] if self.runtime_report else f"torch {self.precision}"

    def _choose(self, probe: torch.Tensor) -> Runner:
        from ffd.models.encoder import state_fingerprint

        backbone = self.net.backbone
        fingerprint = f"{type(backbone).__name__}:{state_fingerprint(backbone)}"
        choice = choose_runtime(self.runtime, backbone, fingerprint, torch.contiguous_format,
                                self.precision, probe, self.runtime_dir)  # fmt: skip
        self.runtime_report = choice.report
        return choice.runner


class OnnxScorer:
    """An ``ffd.export`` ONNX model in onnxruntime (fp32; CUDA when onnxruntime has it)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        try:
            options = ort.SessionOptions()
            # Idle intra-op threads sleep instead of spinning: the service's decoding and HTTP threads
            # need the cores between batches (measured: see docs/serve.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        except Exception as err:  # onnxruntime raises its own exception types per failure
            raise FfdError(f"{path} is not a loadable ONNX model ({type(err).__name__}: {err}).") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise FfdError(
                f"{path} is not an ffd export (no '{ONNX_METADATA_KEY}' metadata): use ffd.export."
            )
        card = json.loads(meta[ONNX_METADATA_KEY])
        if "threshold_logit" not in card:
            raise FfdError(f"{path} was exported by an older ffd (no logit output): export it again.")
        self.preprocess, self.threshold_logit = card["preprocess"], float(card["threshold_logit"])
        self.threshold = p_fake(self.threshold_logit)
        self.abstain_band = card.get("abstain")
        self.temperature = float(card["temperature"])
        self.training_run = Path(card["training_run"]) if card.get("training_run") else None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded uint8 RGB images (N, H, W, 3) -> the graph's (probabilities (N, 2), logit of fake (N,))."""
        probs, logit = self.session.run(None, {self.input_name: images.numpy()})
        return torch.from_numpy(probs), torch.from_numpy(logit)

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[1]

    def start_logit(self, images: torch.Tensor) -> Started:
        return at_once(self.logit)(images)

    in_flight = 1


def load_scorer(path: str | Path, runtime: str, runtime_dir: Path | None) -> Scorer:
    """A scorer for an ffd checkpoint (``.ckpt``), an exported ``.onnx`` model or an export folder.

    ``runtime`` and ``runtime_dir`` choose where a checkpoint's backbone runs (``CheckpointScorer``);
    an ONNX model runs in onnxruntime whatever they say.
    """
    if not str(path).strip():
        raise FfdError(
            "ckpt_path is empty: name a checkpoint (.ckpt), an ffd.export folder or its model.onnx."
        )
    if Path(path).is_dir():
        if not (Path(path) / "model.onnx").is_file():
            found = sorted(p.name for p in Path(path).glob("checkpoints/*.ckpt"))
            run = f" It is a training run folder with checkpoints/{{{','.join(found)}}}." if found else ""
            raise FfdError(
                f"{path} is a folder without model.onnx: name a checkpoint (.ckpt), an ffd.export "
                f"folder or its model.onnx.{run}"
            )
        path = Path(path) / "model.onnx"
    if Path(path).suffix == ".onnx":
        if not Path(path).is_file():
            raise FfdError(f"ONNX model {path} does not exist; make one with python -m ffd.export.")
        return OnnxScorer(path)
    from ffd.models.checkpoint import load_checkpoint, run_folder  # imports Lightning: only when needed

    scorer = CheckpointScorer(load_checkpoint(path), runtime, runtime_dir)
    scorer.training_run = run_folder(path)
    return scorer
