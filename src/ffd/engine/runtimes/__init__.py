"""Where a frozen backbone runs: torch, onnxruntime or OpenVINO, one module each, and the chooser.

The frozen trunk is nearly all of the compute of frozen-backbone work (the feature cache build,
eval, predict, the robustness sweep), and which runtime runs it fastest depends on the CPU, so
``runtime=auto`` measures every runtime installed on a few batches, once per machine, model and
precision, and takes the fastest whose features pass the parity check for the precision asked for
(``chooser``). A ``Runner`` (``runner``) takes normalized float images (N, 3, H, W), or, made with
``pixels`` (the model's mean and std), uint8 RGBX pixels (N, H, W, 4) that it normalizes itself:
the feature cache's views, a quarter of the bytes, normalized in each runtime's own fastest way
(torch and onnxruntime as the graph's first ops, OpenVINO by its preprocessing steps).

OpenVINO is optional (``pip install openvino``); on CUDA the trunk always runs in torch.
"""
