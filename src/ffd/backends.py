"""Where a frozen backbone runs: torch, onnxruntime or OpenVINO, chosen by measurement.

The frozen trunk is nearly all of the compute of frozen-backbone work (the feature
cache build, eval, predict, the robustness sweep), and which runtime runs it fastest
depends on the CPU: on a 2-core Intel Xeon with AMX onnxruntime's fp32 ran
MobileNetV2's trunk 1.5x faster than torch's bf16 autocast; on a 2-core AMD EPYC with
AVX-512 torch's bf16 was the fastest, on one without (Zen 3) onnxruntime's fp32, at 1.8x
torch's fp32. ``runtime=auto`` therefore measures every runtime installed on a
few batches, once per machine, model and precision (the result is kept in the cache
folder, like cuDNN's benchmark mode), and takes the fastest whose features pass the
parity check for the precision asked for:

- an fp32 request (``32-true``: the precision every shipped model scores in) takes a
  runtime whose features agree with torch's fp32 to ``FP32_RTOL``;
- a mixed-precision request (the feature cache of a ``bf16-mixed`` run) also takes
  one that is no farther from fp32 than torch's own autocast at that precision.

A runner takes normalized float images (N, 3, H, W), or, made with ``pixels`` (the model's
mean and std), uint8 RGBX pixels (N, H, W, 4) that it normalizes itself (``PixelsIn``):
the feature cache's views, a quarter of the bytes, normalized in each runtime's own
fastest way (torch and onnxruntime as the graph's first ops, OpenVINO by its
preprocessing steps).

OpenVINO is optional (``pip install openvino``); on CUDA the trunk always runs in torch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from ffd.errors import ConfigError, FfdError
from ffd.runtime import autocast_dtype, cpu_name

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
FP32_RTOL = 1e-4  # max |feature difference| / max |feature|: what fp32 runtimes differ by (~1e-6 measured)
MIXED_SLACK = 1.5  # a mixed-precision runtime may be this much farther from fp32 than torch's own
PROBE_BATCHES = 3  # timed batches per candidate (after one warm-up batch)
PROBE_SECONDS = 1.0
# Images per OpenVINO request: a batch's requests are shared among its streams as each one frees
# up (measured on a 2-core Xeon with AMX: see ``openvino_runner``).
OPENVINO_PART = 4


class PixelsIn(nn.Module):
    """uint8 RGBX pixels (N, H, W, 4) (``ffd.data.transforms.rgbx``) -> normalized float images
    (N, 3, H, W) in ``memory_format``, by the model's preprocessing (``mean``, ``std``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, preprocess: Mapping[str, Any], memory_format: torch.memory_format) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(preprocess["mean"])).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(list(preprocess["std"])).view(1, 3, 1, 1) * 255)
        self.memory_format = memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :3].permute(0, 3, 1, 2).float()  # NHWC: already channels-last
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


@dataclass
class Runner:
    """A trunk in one runtime and precision: normalized images (N, 3, H, W), or RGBX pixels
    (N, H, W, 4) for one made with ``pixels``, -> fp32 features. One caller at a time."""

    name: str
    precision: str
    run: Callable[[torch.Tensor], torch.Tensor]
    # Batches -> (batch, features) in order, the next batches started before a batch is done (OpenVINO).
    pipeline: Callable[[Iterable[torch.Tensor]], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run(x)

    @contextlib.contextmanager
    def beside(self) -> Iterator[None]:
        """Work done in torch while this runtime runs (views, conversions) on one thread.

        onnxruntime and OpenVINO have their own threads, one per core; torch's idle OpenMP
        threads spin on the same cores after each op. With torch on one thread, a cache build
        fed by a second thread reached 89-98 % of OpenVINO's rate alone on a 2-core Xeon,
        against 78-82 % with two.
        """
        if self.name == "torch":  # torch runs the trunk: its threads are the runtime's
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch with its features, in order. A runtime that runs several requests at once
        (OpenVINO) starts the next batches while this one finishes, so no core waits between them."""
        if self.pipeline is not None:
            yield from self.pipeline(batches)
        else:
            for x in batches:
                yield x, self(x)


def torch_runner(
    module: nn.Module, precision: str, memory_format: torch.memory_format, pixels: Mapping | None = None
) -> Runner:
    device = next(module.parameters()).device
    dtype = autocast_dtype(precision)
    if pixels is not None:
        module = nn.Sequential(PixelsIn(pixels, memory_format).to(device), module)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        x = x if pixels is not None else x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
            return module(x).float()

    return Runner("torch", precision, run)


def export_trunk(module: nn.Module, example: torch.Tensor, path: Path, pixels: Mapping | None = None) -> Path:
    """The trunk as an fp32 ONNX file with a dynamic batch, for inputs like ``example`` (with
    ``pixels``: ``PixelsIn`` first). Written once, atomically, under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        if path.is_file():
            return path
        tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
        trunk = copy.deepcopy(module).float().cpu().eval()
        if pixels is not None:
            trunk = nn.Sequential(PixelsIn(pixels, torch.contiguous_format), trunk)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation chatter
                torch.onnx.export(
                    trunk, (torch.zeros_like(example[:1], device="cpu"),), str(tmp), input_names=["x"],
                    output_names=["f"], dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17,
                    dynamo=False,
                )  # fmt: skip
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def onnxruntime_runner(onnx_file: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle threads sleep instead of spinning: the thread that decodes or makes the next batch's
    # views needs a core between forward passes (as in ffd.inference.scorers.OnnxScorer).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (f,) = session.run(None, {"x": _array(x)})
        return torch.from_numpy(f)

    return Runner("onnxruntime", "32-true", run)


def openvino_runner(onnx_file: Path, precision: str, pixels: Mapping | None = None) -> Runner:
    """OpenVINO on an fp32 trunk file (``export_trunk`` without ``pixels``: given pixels, its
    preprocessing steps normalize them, fused into the compiled model; as ONNX ops they
    cost ~25 % of the rate).

    It runs in OpenVINO's throughput mode (one stream per core on a 2-core CPU, each running its
    requests on its own threads, with no synchronisation between the cores after every layer
    as one request on all of them has), on requests of ``OPENVINO_PART`` images queued to the
    streams as they free up, so a stream slowed by other work (the thread that makes the next
    views) takes fewer of them. ``Runner.map`` keeps the next batches' requests queued while
    a batch finishes. MobileNetV2's trunk on a 2-core Xeon with AMX, bf16, batches of 16 views
    fed back to back, in one run: one request per stream 631-667 img/s, requests of 4 images
    750-786 (same features); the CIPLAB-sized cache build took 10.6-11.5 s against 12.9-14.6 s.
    """
    import openvino as ov

    core = ov.Core()
    hint = "bf16" if precision == "bf16-mixed" else "f32"
    model = core.read_model(str(onnx_file))
    if pixels is not None:
        model = _openvino_pixels_in(model, pixels)
    compiled = core.compile_model(
        model, "CPU",
        {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
         "PERFORMANCE_HINT": "THROUGHPUT"},
    )  # fmt: skip
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [compiled.create_infer_request() for _ in range(2 * streams)]

    def pipeline(batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idle = deque(requests)
        running: deque[tuple[Any, list[np.ndarray]]] = deque()  # (request, its batch's results), oldest first

        def finish_oldest() -> None:
            request, results = running.popleft()
            try:
                request.wait()  # raises what the request raised
                results.append(request.get_output_tensor(0).data.copy())
            finally:
                idle.append(request)

        def start(x: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray], int]:
            results: list[np.ndarray] = []
            parts = torch.split(x, OPENVINO_PART)
            for part in parts:
                if not idle:
                    finish_oldest()
                request = idle.popleft()
                running.append((request, results))
                request.start_async({0: _array(part)})
            return x, results, len(parts)

        def features(batch: tuple[torch.Tensor, list[np.ndarray], int]) -> tuple[torch.Tensor, torch.Tensor]:
            x, results, parts = batch
            while len(results) < parts:  # the oldest requests are this batch's
                finish_oldest()
            return x, torch.from_numpy(results[0] if parts == 1 else np.concatenate(results))

        try:
            previous = None
            for x in batches:
                current = start(x)
                if previous is not None:  # its features are due while this batch's requests run
                    yield features(previous)
                previous = current
            if previous is not None:
                yield features(previous)
        finally:  # given up on (an error, a caller that stopped): no request is left running
            for request, _ in running:
                with contextlib.suppress(Exception):
                    request.wait()

    return Runner("openvino", precision, lambda x: next(pipeline([x]))[1], pipeline)


def _openvino_pixels_in(model: Any, pixels: Mapping) -> Any:
    """An OpenVINO model of normalized NCHW floats as one of RGBX pixels (``PixelsIn``'s steps)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    h, w = (int(d.get_length()) for d in model.input(0).get_partial_shape()[2:])
    rgb = ops.constant(np.array([0, 1, 2], dtype=np.int64))
    channels = ops.constant(np.int64(3))
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    tensor.set_shape([-1, h, w, 4])
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().custom(
        lambda node: ops.gather(node, rgb, channels).output(0)
    ).convert_element_type(ov.Type.f32).mean([m * 255 for m in pixels["mean"]]).scale(
        [s * 255 for s in pixels["std"]]
    )
    return ppp.build()


def _array(x: torch.Tensor) -> Any:
    """A runner's input as the contiguous numpy array onnxruntime and OpenVINO take (fp32 or uint8)."""
    return (x if x.dtype == torch.uint8 else x.float()).contiguous().cpu().numpy()


def available(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(PACKAGES[name]) is not None


def _openvino_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def candidates(requested: str, precision: str, on_cpu: bool) -> list[tuple[str, str]]:
    """(runtime, precision) pairs worth measuring for a request."""
    if requested not in RUNTIMES:
        raise ConfigError(f"runtime={requested}: choose one of {', '.join(RUNTIMES)}.")
    if requested != "auto" and not available(requested):
        raise ConfigError(
            f"runtime={requested}, but {PACKAGES[requested]} is not installed: "
            f"pip install {PACKAGES[requested]}, or use runtime=auto."
        )
    if not on_cpu:
        if requested not in ("auto", "torch"):
            raise ConfigError(f"runtime={requested} runs on the CPU only; on CUDA use runtime=auto or torch.")
        return [("torch", precision)]
    pairs = [("torch", precision), ("onnxruntime", "32-true"), ("openvino", "32-true")]
    if precision == "bf16-mixed" and available("openvino") and _openvino_bf16():
        pairs.append(("openvino", "bf16-mixed"))
    return [(n, p) for n, p in pairs if (requested in ("auto", n)) and available(n)]


def relative_error(f: torch.Tensor, reference: torch.Tensor) -> float:
    return float((f.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def rate(runner: Runner, x: torch.Tensor, batches: int = PROBE_BATCHES) -> float:
    """Images/s of a runner on batch x, fed back to back (``Runner.map``): one warm-up batch, then
    up to ``batches`` timed ones (fewer once PROBE_SECONDS have passed: a slow candidate needs no
    precise figure to lose)."""
    runner(x)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()

    def fed() -> Iterator[torch.Tensor]:
        for i in range(batches):
            if i and time.perf_counter() - start >= PROBE_SECONDS:
                return
            yield x

    done = sum(1 for _ in runner.map(fed()))
    sync()
    return done * x.shape[0] / (time.perf_counter() - start)


@dataclass
class Choice:
    """The runner chosen, and the measurements behind the choice (recorded in run_info.json)."""

    runner: Runner
    report: dict[str, Any]


def choose_runtime(
    requested: str,
    module: nn.Module,
    fingerprint: str,
    memory_format: torch.memory_format,
    precision: str,
    probe: torch.Tensor,
    folder: Path | None,
    pixels: Mapping | None = None,
) -> Choice:
    """The trunk runner for a request (``auto``: the fastest that passes parity; see the module doc).

    Args:
        requested: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        module: The frozen trunk, on its device, in eval mode.
        fingerprint: What identifies the trunk's weights (``Encoder.fingerprint``).
        precision: The precision asked for (``32-true``, ``bf16-mixed``, ``16-mixed``).
        probe: A batch of the runner's inputs to measure and check parity on.
        folder: Where the exported trunk and the measurements are kept (None: nowhere, every
            process measures afresh).
        pixels: The model's preprocessing (mean, std): the runner takes RGBX pixels (see the
            module doc). None: normalized images.
    """
    on_cpu = next(module.parameters()).device.type == "cpu"
    pairs = candidates(requested, precision, on_cpu)
    key = _choice_key(fingerprint, precision, pairs, probe.shape)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.warning("Can't keep backbone runtimes in %s (%s): measuring for this run only", folder, err)
            folder = None
    trunks = folder or Path(tempfile.mkdtemp(prefix="ffd-trunk-"))
    size = probe.shape[-2] if pixels is not None else probe.shape[-1]
    plain = torch.zeros(1, 3, size, size)

    def onnx_file(inputs: str) -> Path:  # the trunk's file for normalized images or pixels
        name = hashlib.sha256(f"{fingerprint}:{size}:{inputs}".encode()).hexdigest()[:16]
        return trunks / f"trunk-{name}.onnx"

    def build(name: str, p: str) -> Runner:
        if name == "torch":
            return torch_runner(module, p, memory_format, pixels)
        if name == "onnxruntime" and pixels is not None:  # PixelsIn as the graph's first ops
            inputs = f"pixels:{list(pixels['mean'])}:{list(pixels['std'])}"
            return onnxruntime_runner(export_trunk(module, probe, onnx_file(inputs), pixels))
        onnx = export_trunk(module, plain, onnx_file("normalized"))
        return onnxruntime_runner(onnx) if name == "onnxruntime" else openvino_runner(onnx, p, pixels)

    if folder is None:
        try:
            report, runner = _measure(requested, pairs, build, precision, probe)
        finally:  # the runtimes have read their trunk files: nothing is left behind in /tmp
            shutil.rmtree(trunks, ignore_errors=True)
        return Choice(runner, {**report, "measured_now": True})
    recorded = folder / f"runtime-{key}.json"
    # One process measures; every other one that asks meanwhile (DDP ranks) waits and takes its
    # choice, so all of them compute the same features.
    with FileLock(recorded.with_suffix(".lock")):
        if recorded.is_file():
            report = json.loads(recorded.read_text())
            log.info(
                "Backbone runtime: %s (measured earlier on this machine: %s)", report["chosen"], recorded
            )
            name, p = report["chosen"].split()
            return Choice(build(name, p), {**report, "measured_now": False})
        report, runner = _measure(requested, pairs, build, precision, probe)
        if report["left_out"]:  # a choice among fewer than all: the next run measures again
            return Choice(runner, {**report, "measured_now": True})
        tmp = recorded.with_name(f"{recorded.name}.partial-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(report, indent=2))
            tmp.rename(recorded)
        except OSError as err:  # not kept: the next run measures again
            tmp.unlink(missing_ok=True)
            log.warning("Can't keep the backbone runtime choice in %s (%s)", recorded, err)
    return Choice(runner, {**report, "measured_now": True})


def _measure(
    requested: str,
    pairs: list[tuple[str, str]],
    build: Callable[[str, str], Runner],
    precision: str,
    probe: torch.Tensor,
) -> tuple[dict[str, Any], Runner]:
    """Parity and images/s of each candidate on the probe; the report and the fastest that passes."""
    reference = build("torch", "32-true")(probe).cpu()
    tolerance = FP32_RTOL
    if precision != "32-true":
        torch_mixed = build("torch", precision)(probe).cpu()
        tolerance = max(FP32_RTOL, MIXED_SLACK * relative_error(torch_mixed, reference))
    measured: dict[str, dict[str, float | bool]] = {}
    runners: dict[str, Runner] = {}
    left_out: list[str] = []
    for name, p in pairs:
        try:
            runner = build(name, p)
        except OSError as err:  # the exported trunk can't be written (a full or read-only disk)
            if requested != "auto":
                raise FfdError(f"runtime={name}: can't export the backbone for it ({err}).") from err
            log.warning("Backbone runtime %s %s left out: can't export the backbone (%s)", name, p, err)
            left_out.append(f"{name} {p}")
            continue
        error = relative_error(runner(probe).cpu(), reference)
        measured[runner.label] = {
            "img_per_s": round(rate(runner, probe), 1), "rel_error": error, "parity": error <= tolerance,
        }  # fmt: skip
        runners[runner.label] = runner
    passing = {k: v for k, v in measured.items() if v["parity"]}
    if not passing:
        raise ConfigError(f"No backbone runtime matches {precision} here ({measured}): use runtime=torch.")
    chosen = max(passing, key=lambda k: float(passing[k]["img_per_s"]))
    log.info(
        "Backbone runtime: %s (%s)", chosen,
        ", ".join(f"{k} {v['img_per_s']:.0f} img/s{'' if v['parity'] else ' (fails parity)'}"
                  for k, v in measured.items()),
    )  # fmt: skip
    report = {
        "requested": requested, "precision": precision, "chosen": chosen, "tolerance": tolerance,
        "measured": measured, "left_out": left_out, "batch": int(probe.shape[0]), "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    return report, runners[chosen]


def _choice_key(fingerprint: str, precision: str, pairs: list[tuple[str, str]], shape: torch.Size) -> str:
    versions = {n: _version(n) for n, _ in pairs}
    facts = [fingerprint, precision, pairs, list(shape), cpu_name(), torch.get_num_threads(), versions]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:16]


def _version(name: str) -> str:
    if name == "torch":
        return torch.__version__
    from importlib.metadata import version

    return version(PACKAGES[name])
