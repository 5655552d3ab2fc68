"""`trtkld eval`: INT8 fidelity of each method's Q/DQ model against FP32, in ONNX Runtime.

One run:
1. collect histograms once on the calibration data and search them with every trtkld method;
2. run ONNX Runtime's calibrators (the peers) on the same calibration data;
3. write one Q/DQ model per method/peer with the same :func:`write_qdq_model` (same placement,
   same weight quantization: only the activation thresholds differ);
4. run FP32 and every Q/DQ model on the evaluation data (never used for calibration) and
   accumulate output SQNR, cosine similarity, top-1 agreement, and the per-tensor SQNR of the
   FP32 activations fake-quantized with each method's scales;
5. mark methods whose output SQNR collapsed as DESTRUCTIVE and explain which tensors lost most.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from trtkld.calibration.api import AUTO_DEFAULT
from trtkld.data import CalibrationData
from trtkld.errors import ModelError
from trtkld.evaluate.destructive import (
    DEFAULT_FLOOR_DB,
    DEFAULT_MARGIN_DB,
    explain,
    find_destructive,
    worst_tensors,
)
from trtkld.evaluate.peers import DEFAULT_MEMORY_BUDGET, PEERS, peer_scales, resolve_peers
from trtkld.fidelity import Fidelity, measure_qdq_models, real_rows
from trtkld.qdq import DEFAULT_OP_TYPES, prepare_model, quantizable_activations

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Candidate:
    """One threshold set to evaluate: a trtkld method or an ORT peer."""

    name: str
    kind: str                              # "trtkld" | "peer"
    scales: dict[str, np.float32]
    description: str = ""
    guard_notes: dict[str, list[str]] = field(default_factory=dict)  # tensor -> guard findings
    refinement: Optional[Any] = None       # trtkld.calibration.refine.RefineOutcome (auto+refine)
    auto: Optional[Any] = None             # trtkld.calibration.auto.AutoOutcome (measured auto)


@dataclass
class MethodEval:
    """Fidelity of one method's Q/DQ model against FP32 on the evaluation data.

    ``output_sqnr_db`` and ``cosine`` are the worst over the model outputs (per output values in
    ``outputs``); ``top1_agreement`` is that of the first classifier output (None if none).
    """

    name: str
    kind: str
    description: str
    output_sqnr_db: float
    cosine: float
    top1_agreement: Optional[float]
    outputs: dict[str, dict[str, Any]]
    tensor_sqnr_db: dict[str, float]
    tensor_clipped: dict[str, float]
    scales: dict[str, float]
    quantized_tensors: int
    left_float: dict[str, str]
    destructive_reason: Optional[str] = None
    explanation: Optional[str] = None
    refinement: Optional[Any] = None       # RefineOutcome of the auto+refine row, else None
    auto: Optional[Any] = None             # AutoOutcome of the output-measured auto row

    @property
    def destructive(self) -> bool:
        return self.destructive_reason is not None

    @property
    def mean_tensor_sqnr_db(self) -> float:
        vals = [v for v in self.tensor_sqnr_db.values() if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def min_tensor_sqnr_db(self) -> float:
        vals = [v for v in self.tensor_sqnr_db.values() if not math.isnan(v)]
        return float(min(vals)) if vals else math.nan


@dataclass
class EvalReport:
    model: str
    calib_data: str
    eval_data: str
    num_calib_samples: int
    num_eval_samples: int
    trt_version: Optional[str]      # recorded only: Q/DQ scales do not depend on it
    op_types: tuple[str, ...]
    per_channel: bool
    floor_db: float
    margin_db: float
    methods: list[MethodEval]

    @property
    def best(self) -> Optional[MethodEval]:
        valid = [m for m in self.methods if not math.isnan(m.output_sqnr_db)]
        return max(valid, key=lambda m: m.output_sqnr_db) if valid else None

    def destructive_trtkld_methods(self) -> list[str]:
        return [m.name for m in self.methods if m.kind == "trtkld" and m.destructive]


def _progress(iterable, *, total: Optional[int], desc: str, quiet: bool, unit: str = "batch"):
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class _Feeds:
    """Re-iterable ``{input: array}`` view of calibration data (for ORT's calibrators)."""

    def __init__(self, data: CalibrationData):
        self._data = data

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self._data:
            yield real_rows(batch)[0]


REFINED_NAME = "auto+refine"


def _guard_notes(hists, results: Mapping[str, Any]) -> dict[str, list[str]]:
    from trtkld.search import guard_findings

    notes: dict[str, list[str]] = {}
    for name, result in results.items():
        hist = hists[name]
        if hist.hist_max > 0:
            found = guard_findings(hist.counts, hist.bin_width, result, name=name)
            if found:
                notes[name] = [f.message for f in found]
    return notes


def trtkld_candidates(
    model: PathLike,
    calib_data: CalibrationData,
    methods: Sequence[str],
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    quiet: bool = False,
    refine: Optional[Any] = None,
    per_channel: bool = True,
    auto: Optional[Any] = AUTO_DEFAULT,
) -> list[Candidate]:
    """Collect histograms once (only of the tensors the Q/DQ model quantizes) and search them
    with every method; guard findings (trtkld.search) are kept to explain collapses.

    ``auto`` (a :class:`trtkld.calibration.auto.AutoOptions`; the default options unless given;
    None = the per-tensor histogram-SQNR rule): the ``auto`` row is the output-measured auto,
    chosen on calibration samples held out from its histograms; its one collection serves
    every other method too (the whole-set histograms are the same).
    ``refine`` (a :class:`trtkld.calibration.refine.RefineOptions`) adds the ``auto+refine``
    candidate: auto refined on held-out calibration samples (never evaluation data).
    """
    from trtkld.calibration.api import calibrate

    if not methods and refine is None:
        return []
    include = [re.escape(n) for n in quantizable_activations(model, op_types)]
    if not include:
        raise ModelError(f"model {model}: no input of {', '.join(op_types)} to calibrate")
    # The refinement needs auto's (ppq's) resolution: a histogram-rule auto is calibrated beside
    # the asked methods so that the one collection serves it (the others rebin it exactly).
    wanted = list(methods)
    extra = ["auto"] if refine is not None and "auto" not in wanted else []
    cal = calibrate(
        model, calib_data, wanted + extra, include=include, quiet=quiet,
        method_options=method_options, op_types=op_types, per_channel=per_channel,
        auto=auto if "auto" in wanted else None,
    )
    hists = cal.histograms
    measured = cal.auto
    out = []
    for method in dict.fromkeys(wanted):
        results = cal.results[method]
        if method == "auto" and measured is not None:
            out.append(Candidate(
                name=method,
                kind="trtkld",
                scales={n: np.float32(r.scale) for n, r in results.items()},
                description=f"trtkld auto, output-measured: {measured.chosen}",
                guard_notes=_guard_notes(hists, results),
                auto=measured,
            ))
            continue
        out.append(Candidate(
            name=method,
            kind="trtkld",
            scales={n: np.float32(r.scale) for n, r in results.items()},
            description=f"trtkld {method}",
            guard_notes=_guard_notes(hists, results),
        ))
    if refine is not None:
        from trtkld.calibration.refine import refine_auto
        from trtkld.fidelity import materialize

        refined = refine_auto(model, materialize(calib_data), hists, op_types=op_types,
                              per_channel=per_channel, method_options=method_options,
                              options=refine, quiet=quiet)
        out.append(Candidate(
            name=REFINED_NAME,
            kind="trtkld",
            scales=refined.scales,
            description="trtkld auto refined on held-out calibration samples (output SQNR)",
            guard_notes=_guard_notes(hists, refined.results),
            refinement=refined,
        ))
    return out


def peer_candidates(
    model: PathLike,
    calib_data: CalibrationData,
    peers: Sequence[str],
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    quiet: bool = False,
) -> list[Candidate]:
    """Run each ORT calibrator on the calibration data."""
    specs = resolve_peers(peers)
    if not specs:
        return []
    prepared, _ = prepare_model(model)
    feeds = _Feeds(calib_data)
    out = []
    for spec in _progress(specs, total=len(specs), desc="ORT calibrators", quiet=quiet,
                          unit="peer"):
        scales = peer_scales(prepared, feeds, spec, op_types=op_types,
                             memory_budget=memory_budget, quiet=True)
        out.append(Candidate(spec.name, "peer", scales, spec.description))
    return out


def evaluate_candidates(
    model: PathLike,
    candidates: Sequence[Candidate],
    eval_data: CalibrationData,
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    floor_db: float = DEFAULT_FLOOR_DB,
    margin_db: float = DEFAULT_MARGIN_DB,
    models_dir: Optional[PathLike] = None,
    top_tensors: int = 3,
    quiet: bool = False,
) -> tuple[list[MethodEval], int]:
    """Write each candidate's Q/DQ model and measure it against FP32 on ``eval_data``.

    Returns (one MethodEval per candidate in order, number of evaluation samples).
    """
    if not candidates:
        raise ModelError("nothing to evaluate: no method and no peer selected")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ModelError(f"candidate names must be unique, found {names}")
    measured, samples = measure_qdq_models(
        model, {c.name: c.scales for c in candidates}, eval_data, op_types=op_types,
        per_channel=per_channel, models_dir=models_dir, quiet=quiet,
    )
    results = [_method_eval(c, measured[c.name]) for c in candidates]
    mark_destructive(results, floor_db=floor_db, margin_db=margin_db, top_tensors=top_tensors,
                     guard_notes={c.name: c.guard_notes for c in candidates})
    return results, samples


def _method_eval(cand: Candidate, fidelity: Fidelity) -> MethodEval:
    return MethodEval(
        name=cand.name,
        kind=cand.kind,
        description=cand.description,
        output_sqnr_db=fidelity.output_sqnr_db,
        cosine=fidelity.cosine,
        top1_agreement=fidelity.top1_agreement,
        outputs=fidelity.outputs,
        tensor_sqnr_db=fidelity.tensor_sqnr_db,
        tensor_clipped=fidelity.tensor_clipped,
        scales=fidelity.scales,
        quantized_tensors=fidelity.quantized_tensors,
        left_float=fidelity.left_float,
        refinement=cand.refinement,
        auto=cand.auto,
    )


def mark_destructive(
    results: Sequence[MethodEval],
    *,
    floor_db: float = DEFAULT_FLOOR_DB,
    margin_db: float = DEFAULT_MARGIN_DB,
    top_tensors: int = 3,
    guard_notes: Optional[Mapping[str, Mapping[str, Sequence[str]]]] = None,
) -> None:
    """Set ``destructive_reason`` and ``explanation`` on each collapsed method (in place).

    ``guard_notes``: method -> tensor -> guard findings of that method's search (trtkld methods).
    """
    verdicts = find_destructive(
        {r.name: r.output_sqnr_db for r in results}, floor_db=floor_db, margin_db=margin_db
    )
    valid = [r for r in results if not math.isnan(r.output_sqnr_db)]
    best = max(valid, key=lambda r: r.output_sqnr_db) if valid else None
    for r in results:
        if r.name not in verdicts:
            continue
        reference = best.tensor_sqnr_db if best is not None and best is not r else None
        rows = worst_tensors(r.tensor_sqnr_db, r.tensor_clipped,
                             reference_sqnr_db=reference, count=top_tensors)
        method_notes = (guard_notes or {}).get(r.name, {})
        notes = [msg for name, *_ in rows for msg in method_notes.get(name, [])]
        others = len([t for t in method_notes if t not in {row[0] for row in rows}])
        if others:
            notes.append(f"{others} other tensor(s) flagged by the search guard")
        r.destructive_reason = verdicts[r.name]
        r.explanation = explain(r.name, verdicts[r.name], rows, notes)


def evaluate(
    model: PathLike,
    calib_data: CalibrationData,
    eval_data: CalibrationData,
    methods: Sequence[str],
    peers: Sequence[str] = tuple(PEERS),
    *,
    trt_version: Optional[str] = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    floor_db: float = DEFAULT_FLOOR_DB,
    margin_db: float = DEFAULT_MARGIN_DB,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    peer_memory_budget: int = DEFAULT_MEMORY_BUDGET,
    models_dir: Optional[PathLike] = None,
    top_tensors: int = 3,
    quiet: bool = False,
    calib_description: str = "",
    eval_description: str = "",
    refine: Optional[Any] = None,
    auto: Optional[Any] = AUTO_DEFAULT,
) -> EvalReport:
    """Calibrate with every method and peer, and measure each INT8 model against FP32.

    ``refine``: :class:`trtkld.calibration.refine.RefineOptions` to add the ``auto+refine`` row.
    ``trt_version`` is only recorded in the report (no cache is written).
    """
    candidates = trtkld_candidates(model, calib_data, methods,
                                   op_types=op_types, method_options=method_options, quiet=quiet,
                                   refine=refine, per_channel=per_channel, auto=auto)
    candidates += peer_candidates(model, calib_data, peers, op_types=op_types,
                                  memory_budget=peer_memory_budget, quiet=quiet)
    results, samples = evaluate_candidates(
        model, candidates, eval_data, op_types=op_types, per_channel=per_channel,
        floor_db=floor_db, margin_db=margin_db, models_dir=models_dir,
        top_tensors=top_tensors, quiet=quiet,
    )
    return EvalReport(
        model=str(model),
        calib_data=calib_description,
        eval_data=eval_description,
        num_calib_samples=int(getattr(calib_data, "num_samples", 0)),
        num_eval_samples=samples,
        trt_version=trt_version,
        op_types=tuple(op_types),
        per_channel=per_channel,
        floor_db=floor_db,
        margin_db=margin_db,
        methods=results,
    )
