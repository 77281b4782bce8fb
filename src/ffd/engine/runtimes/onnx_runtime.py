"""The trunk exported to ONNX (fp32, dynamic batch) and run in onnxruntime on the CPU."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from ffd.engine.runtimes.runner import PixelsIn, Runner, as_array, in_parts
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
    """The trunk in onnxruntime, run as OpenVINO's throughput mode runs: one stream per core (each
    request runs on its calling thread, so the cores don't wait for each other after every layer as
    one request on all of them does), on requests of ``part_size`` images taken by whichever stream
    is free. One session holds the weights: onnxruntime runs concurrent requests on one session.
    ``Runner.start`` returns once a batch's requests are queued (``Runner.map``, the service's
    batcher). On a 2-core AMD EPYC, 8 service clients got 108 img/s this way against 81 with one
    request on both cores at a time (docs/serve.md).
    """
    import onnxruntime as ort

    streams = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a request on its calling thread: no thread pool, no spinning
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    pool = ThreadPoolExecutor(streams, thread_name_prefix="ffd-onnxruntime")
    waiter = ThreadPoolExecutor(1, thread_name_prefix="ffd-onnxruntime-wait")

    def request(part: torch.Tensor) -> np.ndarray:
        return session.run(None, {"x": as_array(part)})[0]

    def start(x: torch.Tensor) -> Future[torch.Tensor]:
        return in_parts(x, streams, lambda part: pool.submit(request, part), waiter)

    return Runner("onnxruntime", "32-true", lambda x: start(x).result(), start)
