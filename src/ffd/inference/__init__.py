"""Inference: scorers (checkpoint, ONNX), predicting on files, exporting a model."""
