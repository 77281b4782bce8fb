"""The trunk exported to ONNX (fp32, dynamic batch) and run in onnxruntime on the CPU."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from ffd.engine.runtimes.runner import PixelsIn, Runner, as_array
from ffd.files import publish_file


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
            publish_file(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def onnxruntime_runner(onnx_file: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle threads sleep instead of spinning: the thread that decodes or makes the next batch's
    # views needs a core between forward passes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (f,) = session.run(None, {"x": as_array(x)})
        return torch.from_numpy(f)

    return Runner("onnxruntime", "32-true", run)
