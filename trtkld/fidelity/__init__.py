"""Fidelity of a Q/DQ INT8 model against FP32: Q/DQ placement + ONNX Runtime + metrics.

A stage below calibration: the output-measured ``auto`` (trtkld.calibration) scores its
candidates with it, and ``trtkld eval`` (trtkld.evaluate) reports with it.

- :func:`measure_qdq_models`: one Q/DQ model per scale set, each measured against FP32.
- :class:`ScaleFeedSession`: one Q/DQ model whose activation scales are given per run.
- metrics: output SQNR, cosine similarity, top-1 agreement, fake-quantization of activations.
- :func:`sensitivity_analysis`: per-tensor output damage and cumulative keep-float gains.
"""
from __future__ import annotations

from trtkld.fidelity.measure import (
    METRICS,
    Fidelity,
    measure_qdq_models,
    metric_value,
    output_records,
    safe_file_name,
    warn_left_float,
    worst,
)
from trtkld.fidelity.metrics import (
    OutputAccumulator,
    TensorAccumulator,
    fake_quantize,
    is_classifier_output,
    per_sample_cosine,
    sqnr_db,
)
from trtkld.fidelity.samples import (
    batch_limit,
    chunk_samples,
    fold_indices,
    materialize,
    samples_as_batches,
)
from trtkld.fidelity.scalefeed import ScaleFeedSession, lift_scale_inputs
from trtkld.fidelity.sensitivity import (
    GatedQdqSession,
    KeepFloatStep,
    SensitivityReport,
    TensorSensitivity,
    sensitivity_analysis,
)
from trtkld.fidelity.session import QDQ_DISABLED_OPTIMIZERS, ort_session, real_rows

__all__ = [
    "METRICS",
    "QDQ_DISABLED_OPTIMIZERS",
    "Fidelity",
    "GatedQdqSession",
    "KeepFloatStep",
    "OutputAccumulator",
    "ScaleFeedSession",
    "SensitivityReport",
    "TensorAccumulator",
    "TensorSensitivity",
    "batch_limit",
    "chunk_samples",
    "fake_quantize",
    "fold_indices",
    "is_classifier_output",
    "lift_scale_inputs",
    "materialize",
    "measure_qdq_models",
    "metric_value",
    "ort_session",
    "output_records",
    "per_sample_cosine",
    "real_rows",
    "safe_file_name",
    "samples_as_batches",
    "sensitivity_analysis",
    "sqnr_db",
    "warn_left_float",
    "worst",
]
