"""Model execution stage: run calibration batches and return activation tensors by name."""
from trtkld.collect.onnxruntime import OnnxRuntimeCollector, activation_tensor_names

__all__ = ["OnnxRuntimeCollector", "activation_tensor_names"]
