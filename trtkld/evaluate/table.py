"""The final `trtkld eval` table and its JSON form (schema documented in docs/qdq.md)."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from trtkld._io import atomic_write
from trtkld.errors import DataError
from trtkld.evaluate.runner import EvalReport, MethodEval

JSON_SCHEMA = "trtkld-eval/1"
RED, BOLD, RESET = "\033[31m", "\033[1m", "\033[0m"


def _num(value: Optional[float]) -> Optional[float]:
    """JSON number, or null for None/NaN/inf (JSON has no infinities; see docs/qdq.md)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def method_to_json(m: MethodEval) -> dict[str, Any]:
    return {
        "kind": m.kind,
        "output_sqnr_db": _num(m.output_sqnr_db),
        "cosine": _num(m.cosine),
        "top1_agreement": _num(m.top1_agreement),
        "mean_tensor_sqnr_db": _num(m.mean_tensor_sqnr_db),
        "min_tensor_sqnr_db": _num(m.min_tensor_sqnr_db),
        "quantized_tensors": m.quantized_tensors,
        "destructive": m.destructive,
        # Text and nested objects below are not table columns for the report reader.
        "notes": {
            "description": m.description,
            "destructive_reason": m.destructive_reason,
            "explanation": m.explanation,
            "left_float": dict(m.left_float),
        },
        "outputs": {
            o: {k: (_num(v) if isinstance(v, float) else v) for k, v in rec.items()}
            for o, rec in m.outputs.items()
        },
        "per_tensor_sqnr_db": {t: _num(v) for t, v in m.tensor_sqnr_db.items()},
        "per_tensor_clipped_fraction": {t: _num(v) for t, v in m.tensor_clipped.items()},
        "scales": dict(m.scales),
        **({"refinement": m.refinement.to_json()} if m.refinement is not None else {}),
        **({"auto": m.auto.to_json()} if m.auto is not None else {}),
    }


def _eval_gain(report: EvalReport, m: MethodEval) -> Optional[float]:
    """Evaluation-data output SQNR gain of a refined row over the ``auto`` row (None: no auto
    row, or a non-finite SQNR)."""
    auto = next((r for r in report.methods if r.name == "auto"), None)
    if auto is None or m.refinement is None:
        return None
    return _num(m.output_sqnr_db - auto.output_sqnr_db)


def report_to_json(report: EvalReport) -> dict[str, Any]:
    best = report.best
    return {
        "schema": JSON_SCHEMA,
        "model": report.model,
        "calib_data": report.calib_data,
        "eval_data": report.eval_data,
        "num_calib_samples": report.num_calib_samples,
        "num_eval_samples": report.num_eval_samples,
        "trt_version": report.trt_version,
        "op_types": ",".join(report.op_types),
        "per_channel_weights": report.per_channel,
        "destructive_floor_db": report.floor_db,
        "destructive_margin_db": report.margin_db,
        "best_method": best.name if best else None,
        "methods": {m.name: _with_eval_gain(report, m) for m in report.methods},
    }


def _with_eval_gain(report: EvalReport, m: MethodEval) -> dict[str, Any]:
    doc = method_to_json(m)
    if "refinement" in doc:
        doc["refinement"]["eval_gain_over_auto_db"] = _eval_gain(report, m)
    return doc


def write_json(report: EvalReport, path: str | os.PathLike) -> None:
    """Write the report as JSON (sorted-free, insertion order; atomic)."""
    text = json.dumps(report_to_json(report), indent=2, allow_nan=False) + "\n"
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as exc:
        raise DataError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc


def format_table(report: EvalReport, *, color: bool = False, top_tensors: int = 3) -> str:
    """Fixed-width table, one row per method, then the worst tensors and DESTRUCTIVE notes."""
    best = report.best
    header = ["method", "kind", "out SQNR dB", "cosine", "top-1", "mean t-SQNR", "min t-SQNR",
              "Q tensors", "status"]
    rows = []
    for m in report.methods:
        status = "DESTRUCTIVE" if m.destructive else ("best" if best is m else "")
        rows.append([
            m.name, m.kind, _fmt(m.output_sqnr_db), _fmt(m.cosine, ".5f"),
            _fmt(m.top1_agreement, ".3f"), _fmt(m.mean_tensor_sqnr_db),
            _fmt(m.min_tensor_sqnr_db), str(m.quantized_tensors), status,
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    left = {0, 1, 8}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [
        f"INT8 (Q/DQ) fidelity vs FP32 - model {os.path.basename(report.model)}; calibration "
        f"{report.calib_data} ({report.num_calib_samples} samples); evaluation "
        f"{report.eval_data} ({report.num_eval_samples} samples)",
        line(header),
        line(["-" * w for w in widths]),
    ]
    for m, r in zip(report.methods, rows):
        text = line(r)
        if m.destructive and color:
            text = f"{RED}{BOLD}{text}{RESET}"
        out.append(text)
    out.append("")
    out.append(f"worst tensors (fake-quantized FP32 activations, SQNR dB), top {top_tensors}:")
    for m in report.methods:
        finite = {t: v for t, v in m.tensor_sqnr_db.items() if not math.isnan(v)}
        worst = sorted(finite, key=lambda t: (finite[t], t))[:top_tensors]
        items = ", ".join(f"{t} {_fmt(finite[t], '.1f')}" for t in worst)
        out.append(f"  {m.name}: {items or '-'}")
    measured = [m for m in report.methods if m.auto is not None]
    if measured:
        out.append("")
        for m in measured:
            out.append(f"{m.name}: {m.auto.describe()}")
    refined = [m for m in report.methods if m.refinement is not None]
    if refined:
        out.append("")
        for m in refined:
            gain = _eval_gain(report, m)
            tail = "" if gain is None else f"; evaluation output SQNR vs auto: {gain:+.2f} dB"
            out.append(f"{m.name}: {m.refinement.describe()}{tail}")
    destructive = [m for m in report.methods if m.destructive]
    if destructive:
        out.append("")
        for m in destructive:
            text = m.explanation or f"{m.name} is DESTRUCTIVE: {m.destructive_reason}"
            out.append(f"{RED}{text}{RESET}" if color else text)
    return "\n".join(out)
