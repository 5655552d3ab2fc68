"""Q/DQ ONNX models from calibration scales (the TensorRT 10+/11 explicit-quantization path)."""
from __future__ import annotations

from trtkld.qdq.fold import FoldResult, fold_constants
from trtkld.qdq.scales import INT8_SYMMETRIC_MAX, is_usable_scale, range_for_scale
from trtkld.qdq.writer import (
    DEFAULT_MIN_COVERAGE,
    DEFAULT_OP_TYPES,
    MIN_OPSET,
    QdqSummary,
    check_coverage,
    plan_quantization,
    prepare_model,
    quantizable_activations,
    write_qdq_model,
)

__all__ = [
    "DEFAULT_MIN_COVERAGE",
    "DEFAULT_OP_TYPES",
    "FoldResult",
    "INT8_SYMMETRIC_MAX",
    "MIN_OPSET",
    "QdqSummary",
    "check_coverage",
    "fold_constants",
    "is_usable_scale",
    "plan_quantization",
    "prepare_model",
    "quantizable_activations",
    "range_for_scale",
    "write_qdq_model",
]
