"""Calibration inputs: model input specs, image preprocessing, sources, batching, validation.

``open_data(source, specs)`` turns an image folder, .npy/.npz files or a Python data loader into
re-iterable, validated :class:`Batch` objects matching the model's inputs.
"""
from __future__ import annotations

from trtkld.data.dataset import (
    DEFAULT_BATCH_SIZE,
    PADDING_SUFFIX,
    Batch,
    CalibrationData,
    open_data,
)
from trtkld.data.preprocess import ImagePipeline, PreprocessOptions
from trtkld.data.specs import InputSpec, input_specs_from_onnx
from trtkld.errors import DataError

__all__ = [
    "PADDING_SUFFIX",
    "DEFAULT_BATCH_SIZE",
    "Batch",
    "CalibrationData",
    "DataError",
    "ImagePipeline",
    "InputSpec",
    "PreprocessOptions",
    "input_specs_from_onnx",
    "open_data",
]
