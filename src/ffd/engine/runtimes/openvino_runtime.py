"""The trunk in OpenVINO on the CPU (fp32, or bf16 where the CPU has it), in throughput mode."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffd.engine.runtimes.runner import Runner, as_array, in_parts


def openvino_bf16() -> bool:
    """Whether OpenVINO runs bf16 on this CPU."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_runner(onnx_file: Path, precision: str, pixels: Mapping | None = None) -> Runner:
    """OpenVINO on an fp32 trunk file (``export_trunk`` without ``pixels``: given pixels, its
    preprocessing steps normalize them, fused into the compiled model, cheaper than as ONNX ops).

    It runs in OpenVINO's throughput mode (one stream per core on a small CPU, each running its
    requests on its own threads, with no synchronisation between the cores after every layer as
    one request on all of them has), on requests of ``part_size`` images queued to the streams as
    they free up. ``Runner.start`` returns once a batch's requests are queued, so a caller can start
    the next batch (``Runner.map``, the service's batcher) while this one finishes: no stream waits
    for the slower one between batches. A thread of its own waits for the requests (no work there).
    """
    import openvino as ov

    core = ov.Core()
    hint = "bf16" if precision == "bf16-mixed" else "f32"
    model = core.read_model(str(onnx_file))
    if pixels is not None:
        model = _pixels_in(model, pixels)
    compiled = core.compile_model(
        model, "CPU",
        {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
         "PERFORMANCE_HINT": "THROUGHPUT"},
    )  # fmt: skip
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    idle = deque(compiled.create_infer_request() for _ in range(2 * streams))
    free = threading.Semaphore(len(idle))
    waiter = ThreadPoolExecutor(1, thread_name_prefix="ffd-openvino")  # in order: the oldest request first

    def output(request: Any) -> np.ndarray:
        try:
            request.wait()  # raises what the request raised
            return request.get_output_tensor(0).data.copy()
        finally:
            idle.append(request)
            free.release()

    def queued(part: torch.Tensor) -> Future[np.ndarray]:
        free.acquire()  # blocks while every request runs, until the waiter frees the oldest
        request = idle.popleft()
        try:
            request.start_async({0: as_array(part)})
        except BaseException:
            idle.append(request)
            free.release()
            raise
        return waiter.submit(output, request)

    def start(x: torch.Tensor) -> Future[torch.Tensor]:
        return in_parts(x, streams, queued, waiter)

    return Runner("openvino", precision, lambda x: start(x).result(), start)


def _pixels_in(model: Any, pixels: Mapping) -> Any:
    """An OpenVINO model of normalized NCHW floats as one of RGBX pixels (``PixelsIn``'s steps)."""
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
