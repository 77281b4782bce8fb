"""The trunk in OpenVINO on the CPU (fp32, or bf16 where the CPU has it), in throughput mode."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffd.engine.runtimes.runner import Runner, as_array

# Images per OpenVINO request: a batch's requests are shared among the streams as each one frees up,
# so a stream slowed by other work takes fewer of them (the size is measured: see docs/performance.md).
PART = 4


def openvino_bf16() -> bool:
    """Whether OpenVINO runs bf16 on this CPU."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_runner(onnx_file: Path, precision: str, pixels: Mapping | None = None) -> Runner:
    """OpenVINO on an fp32 trunk file (``export_trunk`` without ``pixels``: given pixels, its
    preprocessing steps normalize them, fused into the compiled model, cheaper than as ONNX ops).

    It runs in OpenVINO's throughput mode (one stream per core on a small CPU, each running its
    requests on its own threads, with no synchronisation between the cores after every layer as
    one request on all of them has), on requests of ``PART`` images queued to the streams as they
    free up. ``Runner.map`` keeps the next batches' requests queued while a batch finishes.
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
            parts = torch.split(x, PART)
            for part in parts:
                if not idle:
                    finish_oldest()
                request = idle.popleft()
                running.append((request, results))
                request.start_async({0: as_array(part)})
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
