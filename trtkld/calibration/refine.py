"""Output-aware refinement of ``auto``: per tensor, the threshold method that maximises the
model's output SQNR against FP32 on calibration samples held out from the histograms.

``auto`` picks, per tensor, the method whose threshold gives that tensor the best histogram
SQNR. That ignores how errors compound through the network (depthwise convolutions,
HardSwish...). The refinement measures the real thing, the INT8 model's output, and keeps the
same candidates: each method's threshold from the same kind of histograms.

Held-out data, from the calibration set only (evaluation data is never touched):

* the calibration samples, in their deterministic order, are split into ``folds`` folds by
  index (sample ``i`` is in fold ``i % folds``);
* for each fold ``f``, histograms are collected on the OTHER folds (their own two-pass ranges,
  exactly as ``trtkld calibrate`` would on that subset) and searched with every method; those
  thresholds are scored on fold ``f``. Every calibration sample is thus scored by thresholds
  that never saw it (cross-fitting): with the 12-image demo set a single held-out quarter would
  leave 3 images (12 output values on the 4-class demo model), far too few to rank candidates;
* the objective is the worst model output's SQNR (``10 log10(sum y^2 / sum (y - y_int8)^2)``
  over all held-out samples of all folds, the metric ``trtkld eval`` reports);
* what is chosen is a METHOD per tensor. The written thresholds are those methods applied to
  the histograms of the WHOLE calibration set, the ones every other method uses.

Search: start from the best of ``auto`` and every single method applied to all tensors; then
coordinate descent over the ``max_tensors`` tensors whose candidate thresholds disagree most
(``log2(largest amax / smallest amax)``, ties in graph order), trying every method per tensor
in ``AUTO_ORDER``, for up to ``sweeps`` sweeps (stopping when a sweep changes nothing). A change
is kept only when it raises the objective by more than ``min_gain_db``, so the result is never
below its start (or ``auto``) on the held-out objective.

Speed: one Q/DQ model is written; its activation scale initializers are also declared as graph
inputs, which ONNX Runtime lets a run override, so each trial is one ``run`` with new scale
values, never a new model or session (:class:`ScaleFeedSession`).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from trtkld.errors import EvaluationError, ModelError
from trtkld.fidelity import (
    ScaleFeedSession,
    batch_limit,
    chunk_samples,
    fold_indices,
    ort_session,
    samples_as_batches,
    sqnr_db,
)
from trtkld.histogram import HistogramSet
from trtkld.qdq import DEFAULT_OP_TYPES, is_usable_scale
from trtkld.search import SearchResult
from trtkld.search.auto import AUTO_ORDER

AUTO = "auto"
CANDIDATES: tuple[str, ...] = (AUTO,) + AUTO_ORDER  # "auto" = that fold's own auto choice


@dataclass(frozen=True)
class RefineOptions:
    """Refinement settings (chosen before any evaluation-data number was looked at).

    max_tensors: tensors refined, those whose methods disagree most; 0 = every quantized tensor.
    sweeps: coordinate-descent passes over them (stops early when one changes nothing).
    min_gain_db: a change must raise the held-out output SQNR by more than this (dB); gains
        below it are noise on a dozen samples and keep the earlier choice.
    folds: cross-fitting folds of the calibration samples (>= 2).
    """

    max_tensors: int = 16
    sweeps: int = 2
    min_gain_db: float = 0.05
    folds: int = 2

    def __post_init__(self) -> None:
        if self.max_tensors < 0 or self.sweeps < 0 or self.folds < 2 or not (
                self.min_gain_db >= 0):
            raise EvaluationError(
                f"refine options: expected max_tensors >= 0, sweeps >= 0, folds >= 2, "
                f"min_gain_db >= 0; found {self}"
            )


@dataclass
class RefineOutcome:
    """What the refinement chose and what it cost.

    results: tensor -> full-calibration-set SearchResult of the chosen method (every tensor of
        the histograms, in their order; tensors not quantized keep ``auto``'s result).
    chosen: quantized tensor -> method ("auto" = auto's own per-tensor choice).
    heldout_*_db: the held-out (cross-fitted calibration) output SQNR of ``auto``, of the start
        assignment and of the result.
    """

    results: dict[str, SearchResult]
    chosen: dict[str, str]
    start: str
    heldout_auto_db: float
    heldout_start_db: float
    heldout_refined_db: float
    trials: int
    seconds: float
    tensors_refined: list[str]
    changed: dict[str, str]            # tensor -> method, where it differs from ``start``
    num_samples: int
    options: RefineOptions = field(default_factory=RefineOptions)
    start_scores: dict[str, float] = field(default_factory=dict)  # "auto"/method -> held-out dB

    @property
    def scales(self) -> dict[str, np.float32]:
        return {t: np.float32(r.scale) for t, r in self.results.items()}

    @property
    def gain_db(self) -> float:
        """Held-out gain over ``auto`` (dB)."""
        return self.heldout_refined_db - self.heldout_auto_db

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> Optional[float]:
            return float(v) if math.isfinite(v) else None

        return {
            "start": self.start,
            "heldout_auto_sqnr_db": num(self.heldout_auto_db),
            "heldout_start_sqnr_db": num(self.heldout_start_db),
            "heldout_refined_sqnr_db": num(self.heldout_refined_db),
            "heldout_gain_db": num(self.gain_db),
            "trials": self.trials,
            "seconds": round(self.seconds, 3),
            "num_samples": self.num_samples,
            "folds": self.options.folds,
            "max_tensors": self.options.max_tensors,
            "sweeps": self.options.sweeps,
            "min_gain_db": self.options.min_gain_db,
            "tensors_refined": list(self.tensors_refined),
            "changed": dict(self.changed),
            "tensor_methods": dict(self.chosen),
            "heldout_start_scores_db": {m: num(v) for m, v in self.start_scores.items()},
        }

    def describe(self) -> str:
        return (
            f"{self.trials} trials in {self.seconds:.1f} s over {len(self.tensors_refined)} "
            f"tensor(s); held-out calibration output SQNR ({self.num_samples} samples, "
            f"{self.options.folds}-fold): auto {self.heldout_auto_db:.2f} dB, start "
            f"{self.start} {self.heldout_start_db:.2f} dB, refined "
            f"{self.heldout_refined_db:.2f} dB; {len(self.changed)} tensor(s) changed from "
            f"{self.start}"
        )


# --------------------------------------------------------------------------- objective


class _Objective:
    """Held-out output SQNR of a method assignment (tensor -> method), cross-fitted."""

    def __init__(self, session: ScaleFeedSession, fold_results: list[dict[str, dict]],
                 fold_chunks: list[list[tuple[dict[str, np.ndarray], int]]],
                 references: list[list[list[np.ndarray]]]):
        self.session = session
        self.fold_results = fold_results  # fold -> method -> tensor -> SearchResult
        self.fold_chunks = fold_chunks    # fold -> [(feeds, real rows)] of that fold's samples
        self.references = references      # fold -> chunk -> FP32 outputs
        self.trials = 0

    def scales(self, fold: int, assignment: Mapping[str, str]) -> dict[str, np.float32]:
        res = self.fold_results[fold]
        return {t: np.float32(res[m][t].scale) for t, m in assignment.items()}

    def key(self, tensor: str, method: str) -> tuple:
        """What a candidate changes: its scale in every fold (equal keys, equal trials)."""
        return tuple(np.float32(r[method][tensor].scale).tobytes() for r in self.fold_results)

    def __call__(self, assignment: Mapping[str, str]) -> float:
        self.trials += 1
        names = self.session.output_names
        signal = np.zeros(len(names))
        noise = np.zeros(len(names))
        for fold, chunks in enumerate(self.fold_chunks):
            scales = self.scales(fold, assignment)
            for (feeds, real), ref in zip(chunks, self.references[fold]):
                got = self.session.run(feeds, scales)
                for k, (y, q) in enumerate(zip(ref, got)):
                    rows = next(iter(feeds.values())).shape[0]
                    cut = real < rows and y.ndim and y.shape[0] == rows   # padded rows only
                    y = np.asarray(y[:real] if cut else y, np.float64)
                    q = np.asarray(q[:real] if cut else q, np.float64)
                    if not np.all(np.isfinite(q)):
                        return -math.inf
                    signal[k] += float(np.sum(y * y))
                    noise[k] += float(np.sum((y - q) ** 2))
        values = [sqnr_db(s, n) for s, n in zip(signal, noise)]
        return -math.inf if any(math.isnan(v) for v in values) else min(values)


def spread_order(results: Mapping[str, Mapping[str, SearchResult]], tensors: Sequence[str]
                 ) -> list[str]:
    """``tensors`` by decreasing disagreement ``log2(max amax / min amax)`` over the methods
    (graph order on ties)."""
    def spread(t: str) -> float:
        amaxes = [float(results[m][t].amax) for m in AUTO_ORDER if m in results]
        return math.log2(max(amaxes) / min(amaxes)) if min(amaxes) > 0 else math.inf

    order = {t: i for i, t in enumerate(tensors)}
    return sorted(tensors, key=lambda t: (-spread(t), order[t]))


def coordinate_descent(objective, start: dict[str, str], tensors: Sequence[str],
                       candidates: Sequence[str], *, sweeps: int, min_gain_db: float,
                       start_score: Optional[float] = None, key=None, progress=None
                       ) -> tuple[dict[str, str], float]:
    """Greedy per-tensor search: for each tensor in order, try each candidate (skipping those
    whose ``key(tensor, method)`` equals the current one's) and keep it when the objective rises
    by more than ``min_gain_db``. Returns (assignment, its score); the score is never below the
    start's."""
    current = dict(start)
    best = objective(current) if start_score is None else start_score
    for _ in range(sweeps):
        changed = False
        for t in tensors:
            seen = {key(t, current[t])} if key else {current[t]}
            for m in candidates:
                k = key(t, m) if key else m
                if k in seen:
                    continue
                seen.add(k)
                trial = dict(current)
                trial[t] = m
                score = objective(trial)
                if progress is not None:
                    progress()
                if score > best + min_gain_db:
                    current, best, changed = trial, score, True
        if not changed:
            break
    return current, best


# --------------------------------------------------------------------------- orchestration


def refine_auto(
    model: Union[str, Path],
    samples: Sequence[Mapping[str, np.ndarray]],
    hists: HistogramSet,
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    options: RefineOptions = RefineOptions(),
    quiet: bool = False,
) -> RefineOutcome:
    """Refine ``auto``'s per-tensor methods on held-out calibration samples (module docstring).

    Args:
        model: FP32 ONNX model.
        samples: calibration samples (:func:`trtkld.fidelity.materialize`),
            ``{input: (1, ...)}`` each, in data order; the same data ``hists`` was collected
            on. Never evaluation data.
        hists: histograms of the whole calibration set with at least ``auto``'s bin count
            (4096), covering the tensors the Q/DQ model quantizes.
    Returns:
        a :class:`RefineOutcome`; its ``results`` cover every tensor of ``hists``.
    """
    from trtkld.data import input_specs_from_onnx
    from trtkld.pipeline import collect_histograms, search_histograms

    started = time.perf_counter()
    methods = (AUTO,) + AUTO_ORDER
    full = {m: search_histograms(hists, m, method_options=method_options) for m in methods}
    quantized = [t for t in hists if t in full[AUTO]]
    usable = [t for t in quantized
              if all(is_usable_scale(np.float32(full[m][t].scale)) for m in methods)]
    session = ScaleFeedSession(model, {t: full[AUTO][t].scale for t in usable},
                               op_types=op_types, per_channel=per_channel)
    tensors = [t for t in session.tensors if t in full[AUTO]]
    if not tensors:
        raise ModelError(f"model {model}: no quantized activation to refine")

    size, fixed = batch_limit(input_specs_from_onnx(model))
    folds = fold_indices(len(samples), options.folds)
    fp32 = ort_session(model, quantized=False)
    include = [re.escape(t) for t in tensors]
    num_bins = max(h.num_bins for h in hists.values())
    fold_results, fold_chunks, references = [], [], []
    for f, held in enumerate(folds):
        train = [samples[i] for i in range(len(samples)) if i % options.folds != f]
        fold_hists = collect_histograms(model, samples_as_batches(train, size, fixed, 0),
                                        num_bins=num_bins, include=include, quiet=True)
        res = {m: search_histograms(fold_hists, m, method_options=method_options)
               for m in methods}
        for m in methods:
            for t in tensors:
                if not is_usable_scale(np.float32(res[m][t].scale)):
                    raise ModelError(f"tensor {t!r}: {m} gives the unusable scale "
                                     f"{res[m][t].scale!r} on fold {f}")
        fold_results.append(res)
        chunks = chunk_samples([samples[i] for i in held], size, fixed)
        fold_chunks.append(chunks)
        references.append([fp32.run(session.output_names, feeds) for feeds, _ in chunks])
    objective = _Objective(session, fold_results, fold_chunks, references)

    # Start: auto, or one method for every tensor, whichever is best held out (ties: earliest).
    auto_score = objective({t: AUTO for t in tensors})
    start, start_score = AUTO, auto_score
    start_scores = {AUTO: auto_score}
    for m in AUTO_ORDER:
        score = start_scores[m] = objective({t: m for t in tensors})
        if score > start_score:
            start, start_score = m, score

    order = spread_order(full, tensors)
    chosen_tensors = order[:options.max_tensors] if options.max_tensors else order
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(desc="refine (trials)", unit="trial", dynamic_ncols=True, leave=False)
    try:
        assignment, score = coordinate_descent(
            objective, {t: start for t in tensors}, chosen_tensors, methods,
            sweeps=options.sweeps, min_gain_db=options.min_gain_db, start_score=start_score,
            key=objective.key, progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()

    # The chosen methods on the whole calibration set's histograms.
    results = dict(full[AUTO])
    for t in tensors:
        results[t] = full[assignment[t]][t]
    return RefineOutcome(
        results=results,
        chosen=dict(assignment),
        start=start,
        heldout_auto_db=auto_score,
        heldout_start_db=start_score,
        heldout_refined_db=score,
        trials=objective.trials,
        seconds=time.perf_counter() - started,
        tensors_refined=list(chosen_tensors),
        changed={t: m for t, m in assignment.items() if m != start},
        num_samples=len(samples),
        options=options,
        start_scores=start_scores,
    )
