"""Shipping a model: predicting on files and videos, exporting (ONNX, TorchScript, the model card)."""
