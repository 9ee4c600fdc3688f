"""Model factory, checkpoints, ONNX export and demo models."""
