"""Choosing the runtime of a trunk by measurement (``runtime=auto``), or building the one asked for.

- an fp32 request (``32-true``: the precision every shipped model scores in) takes a runtime whose
  features agree with torch's fp32 to ``FP32_RTOL``;
- a mixed-precision request (the feature cache of a ``bf16-mixed`` run) also takes one that is no
  farther from fp32 than torch's own autocast at that precision.

The choice is kept in a folder (like cuDNN's benchmark mode, once per machine, model, precision and
batch shape), so every later run on this machine reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from ffd.engine.runtimes.onnx_runtime import export_trunk, onnxruntime_runner
from ffd.engine.runtimes.openvino_runtime import openvino_bf16, openvino_runner
from ffd.engine.runtimes.runner import Runner, rate, relative_error
from ffd.engine.runtimes.torch_runtime import torch_runner
from ffd.errors import ConfigError, FfdError
from ffd.files import publish_file
from ffd.rules import RUNTIMES
from ffd.runtime import cpu_name

log = logging.getLogger(__name__)

PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
FP32_RTOL = 1e-4  # max |feature difference| / max |feature|: what fp32 runtimes differ by
MIXED_SLACK = 1.5  # a mixed-precision runtime may be this much farther from fp32 than torch's own


def available(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(PACKAGES[name]) is not None


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
    if precision == "bf16-mixed" and available("openvino") and openvino_bf16():
        pairs.append(("openvino", "bf16-mixed"))
    return [(n, p) for n, p in pairs if (requested in ("auto", n)) and available(n)]


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
            package doc). None: normalized images.
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
            publish_file(tmp, recorded)
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
