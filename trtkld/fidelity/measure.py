"""Fidelity of Q/DQ INT8 models against FP32 on some data, in ONNX Runtime.

One FP32 run and one run of every Q/DQ model per batch; outputs are compared as they stream
(:class:`OutputAccumulator`), and optionally the FP32 activations are fake-quantized with each
model's scales (:class:`TensorAccumulator`) to say which tensors lose most.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from trtkld.data import Batch, CalibrationData
from trtkld.errors import EvaluationError, ModelError
from trtkld.fidelity.metrics import OutputAccumulator, TensorAccumulator
from trtkld.fidelity.session import ort_session, real_rows
from trtkld.qdq import DEFAULT_OP_TYPES, write_qdq_model

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

METRICS = ("sqnr", "top1", "cosine")


def metric_value(outputs: Mapping[str, Mapping[str, Any]], metric: str) -> float:
    """One number per model from per-output records (``sqnr_db``, ``cosine``, ``top1_agreement``):
    ``sqnr`` and ``cosine`` are the worst output's, ``top1`` that of the first classifier output
    (NaN when there is none). Higher is better for every metric.
    """
    if metric == "sqnr":
        return worst(v["sqnr_db"] for v in outputs.values())
    if metric == "cosine":
        return worst(v["cosine"] for v in outputs.values())
    if metric == "top1":
        top1 = next((v["top1_agreement"] for v in outputs.values()
                     if v.get("top1_agreement") is not None), None)
        return math.nan if top1 is None else float(top1)
    raise EvaluationError(
        f"unknown fidelity metric {metric!r}: expected one of {', '.join(METRICS)}")


def worst(values: Iterable[float]) -> float:
    """The smallest value; NaN when there is none or one is NaN (undefined)."""
    values = list(values)
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return min(values)


@dataclass
class Fidelity:
    """One Q/DQ model against FP32 on the measured data.

    ``outputs``: output name -> ``{"sqnr_db", "cosine", "top1_agreement", "nonfinite_values"}``.
    ``tensor_sqnr_db`` / ``tensor_clipped``: FP32 activations fake-quantized with this model's
    scales (empty when tensor metrics were not asked for).
    ``scales``: the activation scales the Q/DQ model holds; ``left_float``: tensor -> why not.
    """

    name: str
    outputs: dict[str, dict[str, Any]]
    tensor_sqnr_db: dict[str, float]
    tensor_clipped: dict[str, float]
    scales: dict[str, float]
    left_float: dict[str, str]

    @property
    def output_sqnr_db(self) -> float:
        return metric_value(self.outputs, "sqnr")

    @property
    def cosine(self) -> float:
        return metric_value(self.outputs, "cosine")

    @property
    def top1_agreement(self) -> Optional[float]:
        value = metric_value(self.outputs, "top1")
        return None if math.isnan(value) else value

    @property
    def quantized_tensors(self) -> int:
        return len(self.scales)

    def score(self, metric: str) -> float:
        return metric_value(self.outputs, metric)


def output_records(outs: Mapping[str, OutputAccumulator]) -> dict[str, dict[str, Any]]:
    """Per-output records of finished accumulators (the ``Fidelity.outputs`` shape)."""
    return {
        o: {"sqnr_db": acc.sqnr_db, "cosine": acc.cosine, "top1_agreement": acc.top1_agreement,
            "nonfinite_values": acc.nonfinite}
        for o, acc in outs.items()
    }


def _progress(iterable, *, total: Optional[int], desc: str, quiet: bool):
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


def safe_file_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``_.-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def measure_qdq_models(
    model: PathLike,
    scale_sets: Mapping[str, Mapping[str, float]],
    data: CalibrationData | Sequence[Batch],
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    models_dir: Optional[PathLike] = None,
    tensor_metrics: bool = True,
    quiet: bool = False,
) -> tuple[dict[str, Fidelity], int]:
    """Write one Q/DQ model per scale set (same placement and weights, only the activation
    thresholds differ) and measure each against FP32 on ``data``.

    Args:
        model: FP32 ONNX model.
        scale_sets: name -> (activation tensor -> scale).
        data: batches to run (never the calibration data when the result is reported as
            evaluation); padding rows are dropped.
        models_dir: keep the Q/DQ models there as ``NAME.int8.onnx`` (else a temp dir).
        tensor_metrics: also fake-quantize FP32 activations (per-tensor SQNR, clipped share).
    Returns:
        (name -> :class:`Fidelity` in ``scale_sets`` order, number of samples measured).
    """
    from trtkld.collect import OnnxRuntimeCollector

    if not scale_sets:
        raise ModelError("nothing to measure: no scale set given")
    with tempfile.TemporaryDirectory(prefix="trtkld-fidelity-") as tmp:
        folder = Path(models_dir) if models_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        summaries, sessions = {}, {}
        for name, scales in scale_sets.items():
            path = folder / f"{safe_file_name(name)}.int8.onnx"
            summaries[name] = write_qdq_model(
                model, {t: np.float32(s) for t, s in scales.items()}, path, op_types=op_types,
                per_channel=per_channel, warn_left_float=False,
            )
            sessions[name] = ort_session(path, quantized=True)
        warn_left_float(summaries)
        quantized = sorted({t for s in summaries.values() for t in s.activations})
        fp32 = ort_session(model, quantized=False)
        output_names = [o.name for o in fp32.get_outputs()]
        collector = None
        if tensor_metrics and quantized:
            collector = OnnxRuntimeCollector(model, include=[re.escape(n) for n in quantized])
        out_acc = {n: {o: OutputAccumulator(o) for o in output_names} for n in scale_sets}
        ten_acc = {n: TensorAccumulator(dict(summaries[n].activations)) for n in scale_sets}
        samples = 0
        for batch in _progress(data, total=len(data), desc="fidelity", quiet=quiet):
            feeds, rows = real_rows(batch)
            samples += next(iter(feeds.values())).shape[0]
            ref = dict(zip(output_names, fp32.run(output_names, feeds)))
            sources = tuple(batch.sources if rows is None else (batch.sources[i] for i in rows))
            acts = collector.run(Batch(feeds, sources)) if collector else {}
            for name in scale_sets:
                got = dict(zip(output_names, sessions[name].run(output_names, feeds)))
                for o in output_names:
                    out_acc[name][o].update(ref[o], got[o])
                for t, x in acts.items():
                    ten_acc[name].update(t, x)
            del acts
        del sessions
    out = {
        name: Fidelity(
            name=name,
            outputs=output_records(out_acc[name]),
            tensor_sqnr_db=ten_acc[name].sqnr(),
            tensor_clipped=ten_acc[name].clipped_fraction(),
            scales={t: float(s) for t, s in summaries[name].activations.items()},
            left_float=dict(summaries[name].left_float),
        )
        for name in scale_sets
    }
    return out, samples


def warn_left_float(summaries: Mapping[str, Any]) -> None:
    """One warning per distinct set of float-left tensors (not one per Q/DQ model)."""
    seen: dict[tuple, list[str]] = {}
    for name, summary in summaries.items():
        key = tuple(sorted(summary.left_float.items()))
        if key:
            seen.setdefault(key, []).append(name)
    for key, names in seen.items():
        listing = "\n".join(f"  {t}: {r}" for t, r in key)
        log.warning("%s: %d tensor(s) left in float:\n%s", ", ".join(names), len(key), listing)
