"""ONNX Runtime sessions for fidelity measurement: the FP32 reference and Q/DQ models."""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from trtkld.data import PADDING_SUFFIX, Batch
from trtkld.errors import ModelError

PathLike = Union[str, "os.PathLike[str]"]

# ORT's basic-level QDQPropagationTransformer copies Q/DQ pairs across Transpose/MaxPool/
# Reshape... only when their scales are constants, so a model whose scales are fed at run time
# (trtkld.fidelity.scalefeed) would compute differently from the same model with the scales
# written in. Propagation is meant to be value-neutral and the Q/DQ nodes as written are what
# we measure, so it is off for every Q/DQ session. It is NOT value-neutral in ORT 1.32: on
# open-nsfw it moves output SQNR by up to 3 dB (ppq 47.8 dB with it, 50.7 dB without).
QDQ_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def ort_session(model: Union[PathLike, bytes], *, quantized: bool, threads: int = 0):
    """ONNX Runtime CPU session of a Q/DQ model (``quantized``) or of the FP32 reference.

    ``model`` is a path or the serialized model. Q/DQ models get basic optimisations only
    (constant folding etc.: no QDQ->QLinear fusion, no Q/DQ propagation), so ORT simulates the
    quantization exactly as the Q/DQ nodes define it; the FP32 reference gets none.
    ``threads``: intra-op threads (0 = ORT's default, one per core); tiny one-op models run
    faster on 1 thread than with a pool spinning on a busy machine.

    Raises:
        ModelError: ONNX Runtime cannot load the model (the message names it).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if quantized
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    what = "the serialized model" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            source, options, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS) if quantized else None,
        )
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load {what}: {exc}") from exc


def real_rows(batch: Batch) -> tuple[dict[str, np.ndarray], Optional[np.ndarray]]:
    """Inputs without the rows that only pad a fixed batch, and the row indices kept
    (None when nothing was padded)."""
    keep = [i for i, s in enumerate(batch.sources) if not s.endswith(PADDING_SUFFIX)]
    if len(keep) == len(batch.sources):
        return batch.inputs, None
    rows = np.asarray(keep)
    return {k: v[rows] for k, v in batch.inputs.items()}, rows
