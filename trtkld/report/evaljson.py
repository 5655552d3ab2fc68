"""Reading the JSON written by ``trtkld eval --json`` into what the report shows.

Layout (docs/qdq.md, schema ``trtkld-eval/1``): top-level scalars (model, data folders, sample
counts, ``best_method``...) and ``"methods": {name: {scalar metrics..., "per_tensor_sqnr_db":
{tensor: dB or null}, nested objects...}}``. A list of records with a ``"method"`` key is
accepted as well.

The report only needs two things from it: a fidelity table (one row per method or peer, numeric
metrics as columns) and, where present, per-tensor SQNR per method. The reader is strict about
the shape it needs and ignores fields it does not know, so that eval can add metrics without
breaking reports.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trtkld.errors import DataError

# Keys under which a method record may hold per-tensor SQNR (tensor name -> dB).
_PER_TENSOR_KEYS = ("per_tensor_sqnr_db", "tensor_sqnr_db", "per_tensor_sqnr")
# `trtkld eval --json` writes {"schema": "trtkld-eval/1", ...}; other majors are refused.
SCHEMA_PREFIX = "trtkld-eval/"
# The one text field taken from a record's "notes": why eval marked the method destructive.
REASON_COLUMN = "destructive_reason"
# Keys that name a record's method / peer.
_NAME_KEYS = ("method", "name", "calibrator")


@dataclass(frozen=True)
class EvalTable:
    """Fidelity of each method's INT8 model against FP32.

    ``columns``: metric names in first-seen order; ``rows``: (method, {metric: value}) in file
    order; ``per_tensor_sqnr``: method -> {tensor -> SQNR dB}; ``meta``: top-level scalar fields
    (model, data folders, sample count...) shown above the table.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, dict[str, Any]], ...]
    per_tensor_sqnr: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _records(doc: Any, source: str) -> list[tuple[str, Mapping[str, Any]]]:
    """Method records from the accepted layouts: {"methods": {name: {...}}},
    {"methods": [{"method": name, ...}]}, or the same under "results"."""
    if not isinstance(doc, Mapping):
        raise DataError(f"{source}: expected a JSON object at the top level, found "
                        f"{type(doc).__name__}")
    container = None
    for key in ("methods", "results"):
        if key in doc:
            container = doc[key]
            break
    if container is None:
        raise DataError(f"{source}: expected a 'methods' (or 'results') entry listing each "
                        f"method's metrics, found keys {sorted(doc)[:10]}")
    records: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(container, Mapping):
        for name, rec in container.items():
            if not isinstance(rec, Mapping):
                raise DataError(f"{source}: method {name!r}: expected an object of metrics, "
                                f"found {type(rec).__name__}")
            records.append((str(name), rec))
    elif isinstance(container, list):
        for i, rec in enumerate(container):
            if not isinstance(rec, Mapping):
                raise DataError(f"{source}: methods[{i}]: expected an object of metrics, "
                                f"found {type(rec).__name__}")
            name = next((rec[k] for k in _NAME_KEYS if k in rec), None)
            if not isinstance(name, str):
                raise DataError(f"{source}: methods[{i}]: expected a 'method' name, found "
                                f"keys {sorted(rec)[:10]}")
            records.append((name, rec))
    else:
        raise DataError(f"{source}: 'methods' must be an object or a list, found "
                        f"{type(container).__name__}")
    return records


def _per_tensor(rec: Mapping[str, Any], method: str, source: str) -> Optional[dict[str, float]]:
    for key in _PER_TENSOR_KEYS:
        if key in rec and rec[key] is not None:
            raw = rec[key]
            if not isinstance(raw, Mapping):
                raise DataError(f"{source}: method {method!r}: {key!r} must map tensor names "
                                f"to dB, found {type(raw).__name__}")
            out = {}
            for tensor, value in raw.items():
                if value is None:
                    continue
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise DataError(f"{source}: method {method!r}: {key}[{tensor!r}] must be a "
                                    f"number, found {value!r}")
                out[str(tensor)] = float(value)
            return out
    return None


def parse_eval(doc: Any, source: str = "<eval json>") -> EvalTable:
    """Normalise a decoded eval JSON document (see module docstring for the layouts)."""
    schema = doc.get("schema") if isinstance(doc, Mapping) else None
    if schema is not None and not str(schema).startswith(SCHEMA_PREFIX):
        raise DataError(f"{source}: expected an eval JSON with schema {SCHEMA_PREFIX}N, found "
                        f"schema {schema!r}")
    columns: list[str] = []
    rows = []
    per_tensor: dict[str, dict[str, float]] = {}
    for method, rec in _records(doc, source):
        metrics: dict[str, Any] = {}
        for key, value in rec.items():
            if key in _NAME_KEYS or key in _PER_TENSOR_KEYS or not _is_scalar(value):
                continue
            metrics[key] = value
            if key not in columns:
                columns.append(key)
        notes = rec.get("notes")
        reason = notes.get("destructive_reason") if isinstance(notes, Mapping) else None
        if isinstance(reason, str) and reason:
            metrics[REASON_COLUMN] = reason
        rows.append((method, metrics))
        tensors = _per_tensor(rec, method, source)
        if tensors is not None:
            per_tensor[method] = tensors
    if any(REASON_COLUMN in m for _, m in rows):
        columns.append(REASON_COLUMN)
    meta = {k: v for k, v in doc.items() if k not in ("methods", "results") and _is_scalar(v)}
    return EvalTable(tuple(columns), tuple(rows), per_tensor, meta, source)


def load_eval(path: str | os.PathLike) -> EvalTable:
    """Read and normalise ``trtkld eval --json`` output; DataError naming the file if unusable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{p}: cannot read the eval JSON ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})") from exc
    return parse_eval(doc, str(p))


def format_metric(value: Any) -> str:
    """Table text for one metric value: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)
