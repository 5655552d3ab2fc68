"""Output-measured ``auto``: the threshold rule (or per-tensor mix) whose INT8 model is most
faithful to FP32 on calibration inputs held out from the histograms.

Why: the best rule differs by model, and a tensor's histogram SQNR does not predict output
error. So ``auto`` measures what users judge: the Q/DQ model's output (TensorRT-style placement,
:mod:`trtkld.qdq`) against FP32 in ONNX Runtime (:mod:`trtkld.fidelity`), and picks.

One histogram collection (two model passes, as ``calibrate`` does):

* batches are split into ``folds`` folds by batch index (batch ``j`` -> fold ``j % folds``);
  pass 1 finds every tensor's absmax over all of them, pass 2 fills one |x| histogram set
  (and one signed set, for ORT's entropy rule) PER FOLD over those shared ranges;
* the whole-set histograms are the sum of the folds: exactly the histograms ``calibrate``
  collects, so the chosen rule's cache is byte-identical to ``calibrate --method <rule>``;
* fold ``f``'s training histograms are the sum of the other folds; a rule's fold-``f``
  thresholds are searched on them and never exceed the training folds' own absmax (the shared
  range must not leak fold ``f``'s extremes into, e.g., ``max``).

Scoring (true k-fold): every calibration sample, up to ``ceil(heldout / folds)`` per fold, is
kept from pass 2 and scored exactly once: a candidate's INT8 model runs on fold ``f``'s
held-out samples with its fold-``f`` thresholds (one Q/DQ session whose scales are fed per
run). Two rounds: every candidate on the first ``ROUND1_PER_FOLD`` (one) of each fold's
held-out samples (a cheap screen), then the ``FINALISTS`` first (distinct thresholds) on all of
them. The score is ``metric`` over the held-out samples: top-1 agreement for classifier-shaped
outputs (``[N, C]``), else the worst output's SQNR (or mean cosine). Both rounds rank with
:func:`noise_aware_order`: by the metric, then output SQNR, exact ties to the earlier
candidate; for ``top1``, the candidates within one jackknife standard error of the best are
tied and the highest output SQNR among them comes first. The chosen candidate is first under
that rule among every candidate included, on its own held-out data: a candidate left out ranked
below every finalist on the first round's samples, and ONNX Runtime's own rules, reimplemented
on the same histograms, compete like any other.

Candidates (``candidate_rules``): the registry's auto candidates (max, percentile 99.99 and
99.999, ppq, nvidia, modelopt, mse), the per-tensor best-histogram-SQNR rule, ORT's entropy
(signed 2048 bins, 128 quantized bins) and ORT's percentile (99.999); and ``per-tensor``:
for each quantized tensor the rule whose threshold gives the smallest error at the output of
the Conv/Gemm/MatMul reading it, with its real weights (:mod:`trtkld.calibration.local`),
chosen on training-fold activations only. ``per-tensor`` competes last (it loses exact ties)
with the finalists, under the same rule.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import CalibrationData
from trtkld.errors import DataError, ModelError
from trtkld.fidelity import (
    METRICS,
    ScaleFeedSession,
    batch_limit,
    chunk_samples,
    is_classifier_output,
    ort_session,
    real_rows,
)
from trtkld.histogram import AbsmaxTracker, HistogramSet
from trtkld.histogram.signed import SignedHistogram
from trtkld.qdq import DEFAULT_OP_TYPES, is_usable_scale, prepare_model, quantizable_activations
from trtkld.search import SearchResult
from trtkld.search.ort_rules import (
    ORT_ENTROPY_BINS,
    search_ort_entropy,
    search_ort_percentile,
)
from trtkld.search.result import to_scale

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

PER_TENSOR = "per-tensor"
HIST_AUTO = "hist-sqnr"
AUTO_BINS = 4096          # ppq's resolution; every other rule rebins it exactly
FINALISTS = 3             # rules scored on every held-out sample (round 2)
ROUND1_PER_FOLD = 1       # held-out samples per fold every rule is scored on (round 1)


@dataclass(frozen=True)
class Rule:
    """One candidate threshold rule applied to every tensor.

    ``method``: a registered search (trtkld.search) or ``ort-entropy`` / ``ort-percentile``;
    ``options``: its keyword options; ``label``: the name scores and sidecars use.
    """

    label: str
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    doc: str = ""


def candidate_rules(percentiles: Sequence[float] = (99.99, 99.999)) -> list[Rule]:
    """The single rules ``auto`` compares, in tie-break order (earlier wins a tie): the
    registry's auto candidates in their ``auto_rank`` order (a method taking ``percentile``
    once per value of ``percentiles``), the per-tensor histogram-SQNR rule (registry method
    ``auto``), then ONNX Runtime's entropy and percentile rules (:mod:`trtkld.search.ort_rules`,
    which need histograms the registry's |x| searches do not take)."""
    from trtkld.search.registry import auto_candidates

    rules: list[Rule] = []
    for record in auto_candidates():
        if "percentile" in record.option_names:
            for p in percentiles:
                rules.append(Rule(f"{record.name}-{p:g}", record.name, (("percentile", p),),
                                  f"{record.doc} ({p:g})"))
        else:
            rules.append(Rule(record.name, record.name, (), record.doc))
    rules.append(Rule(HIST_AUTO, "auto", (), "per tensor, the best histogram SQNR of the above"))
    rules.append(Rule("ort-entropy", "ort-entropy", (),
                      "ONNX Runtime Entropy: signed 2048-bin histogram, 128 quantized bins"))
    rules.append(Rule("ort-percentile", "ort-percentile", (),
                      "ONNX Runtime Percentile 99.999 (symmetric)"))
    return rules


@dataclass(frozen=True)
class AutoOptions:
    """Settings of the output-measured auto (fixed before any evaluation data is seen).

    folds: held-out folds of the calibration batches (>= 2). 3: a rule's fold thresholds
        come from 2/3 of the data, close to what it does on all of it, at a search cost of
        one search per fold (scoring costs the same for any number of folds).
    heldout: cap on the calibration samples scored: up to ``ceil(heldout / folds)`` per fold,
        so with no more samples than that every calibration sample is scored exactly once
        (true k-fold: with the thresholds of the other folds). Every rule runs on the first
        ``ROUND1_PER_FOLD`` of each fold's (round 1), the FINALISTS best on all of them
        (round 2): more samples narrow the choice's noise, and only round 2 grows with them.
    metric: ``sqnr`` | ``top1`` | ``cosine``; None = top1 for a classifier-shaped first
        output, else sqnr.
    per_tensor: also try the per-tensor consumer-output choice.
    probe_samples: training samples per fold whose activations the per-tensor choice uses.
    """

    folds: int = 3
    heldout: int = 32
    metric: Optional[str] = None
    per_tensor: bool = True
    probe_samples: int = 1
    percentiles: tuple[float, ...] = (99.99, 99.999)

    def __post_init__(self) -> None:
        if self.folds < 2 or self.heldout < self.folds or self.probe_samples < 1:
            raise DataError(f"auto options: expected folds >= 2, heldout >= folds, "
                            f"probe_samples >= 1; found {self}")
        if self.metric is not None and self.metric not in METRICS:
            raise DataError(f"auto: unknown metric {self.metric!r}; expected one of "
                            f"{', '.join(METRICS)}")


@dataclass
class CandidateScore:
    """Held-out fidelity of one candidate (over every held-out sample of every fold)."""

    label: str
    sqnr_db: float
    cosine: float
    top1: Optional[float]
    score: float                       # the chosen metric
    duplicate_of: Optional[str] = None  # same thresholds in every fold as this earlier one
    per_sample: Optional[dict] = field(default=None, repr=False, compare=False)
    samples: int = 0                    # held-out samples behind the score
    round1: Optional[CandidateScore] = field(default=None, repr=False, compare=False)

    def key(self) -> tuple[float, float]:
        def finite(v: float) -> float:
            return -math.inf if v is None or math.isnan(v) else v
        return (finite(self.score), finite(self.sqnr_db))

    def to_json(self) -> dict[str, Any]:
        def num(v):
            return None if v is None or not math.isfinite(v) else round(float(v), 6)
        doc = {"score": num(self.score), "sqnr_db": num(self.sqnr_db),
               "cosine": num(self.cosine), "top1": num(self.top1), "samples": self.samples}
        if self.duplicate_of:
            doc["same_thresholds_as"] = self.duplicate_of
        return doc


@dataclass
class AutoOutcome:
    """What the output-measured auto chose, for every collected tensor.

    results: tensor -> whole-calibration-set SearchResult of the chosen rule (``method``
        ``"auto"``, ``chosen_method`` = the rule's label per tensor).
    chosen: the winning candidate's label; tensor_rules: tensor -> rule label (every tensor).
    scores: label -> held-out score, in candidate order.
    """

    results: dict[str, SearchResult]
    chosen: str
    metric: str
    scores: dict[str, CandidateScore]
    tensor_rules: dict[str, str]
    histograms: HistogramSet
    heldout_samples: int
    folds: int
    seconds: dict[str, float] = field(default_factory=dict)
    options: AutoOptions = field(default_factory=AutoOptions)
    runner_up: Optional[str] = None
    margin: float = math.nan           # chosen's score minus the runner-up's (held out)
    margin_se: float = math.nan        # its jackknife standard error over held-out samples
    tie_break: dict[str, Any] = field(default_factory=dict)   # noise_aware_order's record

    def to_json(self) -> dict[str, Any]:
        """The sidecar's record: every candidate's score and what was chosen."""
        def num(v):
            return None if v is None or not math.isfinite(v) else round(float(v), 6)
        return {
            "chosen": self.chosen,
            "metric": self.metric,
            "folds": self.folds,
            "heldout_samples": self.heldout_samples,
            "runner_up": self.runner_up,
            "margin": num(self.margin),
            "margin_jackknife_se": num(self.margin_se),
            **({"top1_tie_break": self.tie_break} if self.tie_break else {}),
            "scores": {label: s.to_json() for label, s in self.scores.items()},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def describe(self) -> str:
        best = self.scores[self.chosen]
        runner = self.scores.get(self.runner_up) if self.runner_up else None
        text = (f"auto chose {self.chosen} by held-out {self.metric} ({self.heldout_samples} "
                f"calibration samples, {self.folds} folds): {_fmt(best.score)}"
                f" (output SQNR {best.sqnr_db:.2f} dB)")
        if runner is not None:
            text += f"; next {runner.label} {_fmt(runner.score)} ({runner.sqnr_db:.2f} dB)"
        if self.tie_break.get("applied"):
            text += (f"; top-1 tie within one jackknife SE of {self.tie_break['best_top1']} "
                     f"({', '.join(self.tie_break['tied'])}) broken by output SQNR")
        if math.isfinite(self.margin_se):
            noisy = " - within noise" if abs(self.margin) <= self.margin_se else ""
            text += (f"; margin {_fmt(self.margin)} +- {_fmt(self.margin_se)} (jackknife over "
                     f"held-out samples{noisy})")
        return text


def _fmt(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.4g}"


# --------------------------------------------------------------------------- collection


@dataclass
class FoldedHistograms:
    """Per-fold |x| and signed histograms over shared ranges, and the kept samples."""

    folds: list[HistogramSet]
    signed: list[dict[str, SignedHistogram]]
    heldout: list[list[dict[str, np.ndarray]]]          # fold -> kept real-sample feeds
    probes: list[dict[str, list[np.ndarray]]]           # fold -> tensor -> kept activations

    def whole(self) -> HistogramSet:
        out = self.folds[0]
        for h in self.folds[1:]:
            out = out.merge(h)
        return out

    def training(self, fold: int) -> tuple[HistogramSet, dict[str, SignedHistogram]]:
        others = [f for f in range(len(self.folds)) if f != fold]
        hists = self.folds[others[0]]
        signed = dict(self.signed[others[0]])
        for f in others[1:]:
            hists = hists.merge(self.folds[f])
            signed = {t: s.merge(self.signed[f][t]) for t, s in signed.items()}
        return hists, signed

    def whole_signed(self) -> dict[str, SignedHistogram]:
        signed = dict(self.signed[0])
        for f in range(1, len(self.folds)):
            signed = {t: s.merge(self.signed[f][t]) for t, s in signed.items()}
        return signed


def collect_folded(model: PathLike, data: CalibrationData, *, folds: int, num_bins: int,
                   heldout_per_fold: int, probe_tensors: Sequence[str] = (),
                   probe_per_fold: int = 0, include: Optional[Sequence[str]] = None,
                   exclude: Optional[Sequence[str]] = None,
                   quiet: bool = False) -> FoldedHistograms:
    """Two model passes over ``data`` (module docstring): shared absmax ranges, then per-fold
    histograms; keeps the first ``heldout_per_fold`` real samples of each fold and the
    activations of ``probe_tensors`` for the first ``probe_per_fold`` samples of each fold."""
    if len(data) < folds:
        # Too few batches to fold: split them into one-sample batches where the model's batch
        # size is free (padding rows dropped; the histograms then cover the real samples only).
        if not all(not isinstance(s.batch_dim, int) for s in data.specs):
            raise DataError(f"auto: {folds} held-out folds need at least {folds} calibration "
                            f"batches, found {len(data)}; add inputs or lower --batch-size")
        data = _SingleSamples(data)
        if len(data) < folds:
            raise DataError(f"auto: {folds} held-out folds need at least {folds} calibration "
                            f"samples, found {len(data)}")
    collector = OnnxRuntimeCollector(model, include=include, exclude=exclude)
    tracker = AbsmaxTracker(collector.tensor_names)
    for batch in _bar(data, "auto pass 1/2 (absmax)", quiet):
        tracker.update_many(collector.run(batch))
    names = [n for n in collector.tensor_names if n in tracker]
    absmax = {n: tracker[n] for n in names}
    hists = [HistogramSet.from_absmax(absmax, num_bins) for _ in range(folds)]
    ranges = {n: h.hist_max for n, h in hists[0].items()}
    signed = [{n: SignedHistogram(n, ORT_ENTROPY_BINS, ranges[n]) for n in names}
              for _ in range(folds)]
    heldout: list[list[dict[str, np.ndarray]]] = [[] for _ in range(folds)]
    probes: list[dict[str, list[np.ndarray]]] = [{} for _ in range(folds)]
    probe_count = [0] * folds
    from trtkld.search.batch import DEFAULT_WORKERS

    # Signed histograms on threads, one tensor per task, while the |x| ones fill (the numba
    # kernels release the GIL; each histogram is touched by its own task only: same counts).
    pool = ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix="trtkld-signed")
    try:
        for j, batch in enumerate(_bar(data, "auto pass 2/2 (histograms)", quiet)):
            f = j % folds
            acts = collector.run(batch)
            updates = [pool.submit(signed[f][n].update, acts[n]) for n in names]
            hists[f].update_many({n: acts[n] for n in names})
            for u in updates:
                u.result()
            _keep(batch, acts, f, heldout, heldout_per_fold, probes, probe_tensors,
                  probe_per_fold, probe_count)
    finally:
        pool.shutdown()
    return FoldedHistograms(hists, signed, heldout, probes)


def _keep(batch, acts: Mapping[str, np.ndarray], f: int,
          heldout: list[list[dict[str, np.ndarray]]], heldout_per_fold: int,
          probes: list[dict[str, list[np.ndarray]]], probe_tensors: Sequence[str],
          probe_per_fold: int, probe_count: list[int]) -> None:
    """Keep ``batch``'s real samples for fold ``f``'s held-out set and the probe activations
    (the first ones of each fold, up to the caps)."""
    feeds, rows = real_rows(batch)
    count = next(iter(feeds.values())).shape[0] if feeds else 0
    for i in range(count):
        if len(heldout[f]) < heldout_per_fold:
            heldout[f].append({k: v[i:i + 1] for k, v in feeds.items()})
    if probe_tensors and probe_count[f] < probe_per_fold and count:
        keep = rows if rows is not None else np.arange(count)
        take = keep[:probe_per_fold - probe_count[f]]
        for t in probe_tensors:
            x = acts.get(t)
            if x is not None and x.ndim >= 1 and x.shape[0] == len(batch.sources):
                probes[f].setdefault(t, []).append(np.array(x[take]))
        probe_count[f] += len(take)


class _SingleSamples:
    """Re-iterable one-real-sample batches of ``data`` (padding rows dropped)."""

    def __init__(self, data: CalibrationData):
        self._data = data
        self._count = sum(next(iter(real_rows(b)[0].values())).shape[0] for b in data)

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        from trtkld.data import Batch

        for batch in self._data:
            feeds, rows = real_rows(batch)
            sources = batch.sources if rows is None else [batch.sources[i] for i in rows]
            for i, source in enumerate(sources):
                yield Batch({k: v[i:i + 1] for k, v in feeds.items()}, (source,))


def _bar(data, desc: str, quiet: bool):
    if quiet:
        return data
    from tqdm import tqdm

    return tqdm(data, total=len(data), desc=desc, unit="batch", dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- rules


def apply_rule(rule: Rule, hists: HistogramSet, signed: Mapping[str, SignedHistogram],
               tensors: Optional[Sequence[str]] = None,
               method_options: Optional[Mapping[str, Mapping[str, object]]] = None
               ) -> dict[str, SearchResult]:
    """``rule``'s result for each of ``tensors`` (default: every histogram), in that order."""
    from trtkld.pipeline import search_histograms

    names = list(hists) if tensors is None else list(tensors)
    if rule.method == "ort-entropy":
        out = {}
        for t in names:
            s = signed[t]
            out[t] = search_ort_entropy(s.counts, s.hist_max, s.min, s.max, name=t)
        return out
    if rule.method == "ort-percentile":
        out = {}
        for t in names:
            h = hists[t]
            h = h.rebin(ORT_ENTROPY_BINS) if h.num_bins > ORT_ENTROPY_BINS else h
            out[t] = search_ort_percentile(h.counts, h.bin_width, h.hist_max)
        return out
    subset = hists if tensors is None else HistogramSet([hists[t] for t in names])
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    if rule.options:
        options[rule.method] = {**options.get(rule.method, {}), **dict(rule.options)}
    return search_histograms(subset, rule.method, method_options=options)


def apply_rules(rules: Sequence[Rule], hists: HistogramSet,
                signed: Mapping[str, SignedHistogram], tensors: Optional[Sequence[str]] = None,
                method_options: Optional[Mapping[str, Mapping[str, object]]] = None
                ) -> dict[str, dict[str, SearchResult]]:
    """Every rule's results (label -> tensor -> result). The per-tensor histogram-SQNR rule
    (search method ``auto``) is assembled from the other rules' results where they are the
    very searches it would run, instead of running them again (identical results, tested)."""
    return apply_rules_many(rules, [(hists, signed)], tensors, method_options)[0]


def apply_rules_many(rules: Sequence[Rule],
                     sets: Sequence[tuple[HistogramSet, Mapping[str, SignedHistogram]]],
                     tensors: Optional[Sequence[str]] = None,
                     method_options: Optional[Mapping[str, Mapping[str, object]]] = None
                     ) -> list[dict[str, dict[str, SearchResult]]]:
    """:func:`apply_rules` on each ``(hists, signed)`` of ``sets`` (e.g. every fold's training
    histograms), with the searches of all of them in one threaded batch."""
    outs = _apply_batched([r for r in rules if r.method != "auto"], sets, tensors,
                          method_options)
    for out, (hists, signed) in zip(outs, sets):
        for rule in rules:
            if rule.method == "auto":
                out[rule.label] = _hist_sqnr(rule, rules, out, hists, signed, tensors,
                                             method_options)
    return [{rule.label: out[rule.label] for rule in rules} for out in outs]


def _apply_batched(rules: Sequence[Rule],
                   sets: Sequence[tuple[HistogramSet, Mapping[str, SignedHistogram]]],
                   tensors: Optional[Sequence[str]],
                   method_options: Optional[Mapping[str, Mapping[str, object]]]
                   ) -> list[dict[str, dict[str, SearchResult]]]:
    """What :func:`apply_rule` gives for each of ``rules`` (none of them ``auto``) on each
    histogram set, with every registry search of every rule and set in one
    :func:`run_searches` batch (identical histograms searched once, the rest on threads) and
    ORT's entropy searches on threads too: each search is a pure function of its histogram,
    so the results are the same."""
    from trtkld.pipeline import search_requests
    from trtkld.search.batch import DEFAULT_WORKERS, run_searches

    outs: list[dict[str, dict[str, SearchResult]]] = [{} for _ in sets]
    batched: list[tuple[int, str, list]] = []
    entropy: list[tuple[int, str, list[str]]] = []
    for i, (hists, signed) in enumerate(sets):
        names = list(hists) if tensors is None else list(tensors)
        subset = hists if tensors is None else HistogramSet([hists[t] for t in names])
        for rule in rules:
            if rule.method == "ort-entropy":
                entropy.append((i, rule.label, names))
            elif rule.method == "ort-percentile":
                outs[i][rule.label] = apply_rule(rule, hists, signed, names)
            else:
                options = {k: dict(v) for k, v in (method_options or {}).items()}
                if rule.options:
                    options[rule.method] = {**options.get(rule.method, {}),
                                            **dict(rule.options)}
                batched.append((i, rule.label, search_requests(subset, rule.method,
                                                               method_options=options)))
    if entropy:
        found = _ort_entropy_all([(sets[i][1][t], t) for i, _, names in entropy
                                  for t in names], DEFAULT_WORKERS)
        for i, label, names in entropy:
            outs[i][label] = {t: next(found) for t in names}
    results = iter(run_searches([r for _, _, requests in batched for r in requests]))
    for i, label, requests in batched:
        outs[i][label] = {r.name: next(results) for r in requests}
    return [{rule.label: out[rule.label] for rule in rules} for out in outs]


def _ort_entropy_all(hists: Sequence[tuple[SignedHistogram, str]], workers: int):
    """ORT's entropy rule on each ``(signed histogram, tensor name)``, as an iterator in that
    order (byte-identical histograms searched once, the rest on ``workers`` threads: the
    numba kernel releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    firsts: dict[tuple, int] = {}
    owner = []
    for i, (s, _) in enumerate(hists):
        key = (np.ascontiguousarray(s.counts).tobytes(), float(s.hist_max), float(s.min),
               float(s.max))
        owner.append(firsts.setdefault(key, i))

    def search(i: int) -> SearchResult:
        s, name = hists[i]
        return search_ort_entropy(s.counts, s.hist_max, s.min, s.max, name=name)

    distinct = list(firsts.values())
    if workers > 1 and len(distinct) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="trtkld-ort-entropy") as pool:
            done = dict(zip(distinct, pool.map(search, distinct)))
    else:
        done = {i: search(i) for i in distinct}
    return iter([done[owner[i]] for i in range(len(hists))])


def _hist_sqnr(rule: Rule, rules: Sequence[Rule], done: Mapping[str, Mapping[str, SearchResult]],
               hists: HistogramSet, signed: Mapping[str, SignedHistogram],
               tensors: Optional[Sequence[str]],
               method_options: Optional[Mapping[str, Mapping[str, object]]]
               ) -> dict[str, SearchResult]:
    from trtkld.search.auto import AUTO_ORDER, pick_best
    from trtkld.search.baselines import DEFAULT_PERCENTILE
    from trtkld.search.quality import histogram_sqnr_db
    from trtkld.search.result import clipped_fraction, fallback_result

    auto_options = {**dict((method_options or {}).get("auto", {})), **dict(rule.options)}
    percentile = float(auto_options.get("percentile", DEFAULT_PERCENTILE))
    by_method: dict[str, Mapping[str, SearchResult]] = {}
    missing: list[Rule] = []
    for method in AUTO_ORDER:
        wanted = (("percentile", percentile),) if method == "percentile" else ()
        same = next((r for r in rules if r.method == method and r.label in done
                     and tuple(r.options) == wanted
                     and (wanted or not (method_options or {}).get(method))), None)
        if same is not None:
            by_method[method] = done[same.label]
        else:
            missing.append(Rule(method, method, wanted))
    # The searches it cannot borrow, in one batch (the same results as one rule at a time).
    by_method.update(_apply_batched(missing, [(hists, signed)], tensors, None)[0])
    names = list(hists) if tensors is None else list(tensors)
    out = {}
    for t in names:
        h = hists[t]
        if h.bin_width == 0.0 or not h.counts.any():
            out[t] = fallback_result("auto", 127.0)
            continue
        results = {m: by_method[m][t] for m in AUTO_ORDER}
        scores = {m: histogram_sqnr_db(h.counts, h.bin_width, r.amax, float(r.scale))
                  for m, r in results.items()}
        best = pick_best(scores)
        win = results[best]
        out[t] = SearchResult(method="auto", amax=win.amax, scale=win.scale, index=win.index,
                              kl=win.kl,
                              clipped_fraction=clipped_fraction(h.counts, h.bin_width, win.amax),
                              candidates=win.candidates, divergences=win.divergences,
                              fallback=win.fallback, chosen_method=best, scores=scores)
    return out


class WholeSetResults:
    """Rules' results on the whole calibration set for every collected tensor, each rule
    searched once: the per-tensor mix and the final cache ask for the same rules, and a
    tensor's result does not depend on which other tensors or rules are searched with it."""

    def __init__(self, rules: Sequence[Rule], hists: HistogramSet,
                 signed: Mapping[str, SignedHistogram],
                 method_options: Optional[Mapping[str, Mapping[str, object]]] = None):
        self._rules = {r.label: r for r in rules}
        self._hists, self._signed, self._options = hists, signed, method_options
        self._done: dict[str, dict[str, SearchResult]] = {}

    def get(self, labels: Sequence[str], tensors: Optional[Sequence[str]] = None
            ) -> dict[str, dict[str, SearchResult]]:
        """label -> tensor -> result for ``labels`` and ``tensors`` (default: every
        histogram), searching only what was not searched yet."""
        names = list(self._hists) if tensors is None else list(tensors)
        groups: dict[tuple[str, ...], list[Rule]] = {}    # labels missing the same tensors
        for label in dict.fromkeys(labels):
            done = self._done.get(label, {})
            todo = tuple(t for t in names if t not in done)
            if todo:
                groups.setdefault(todo, []).append(self._rules[label])
        for todo, run in groups.items():
            found = apply_rules(run, self._hists, self._signed, list(todo), self._options)
            for label, res in found.items():
                self._done.setdefault(label, {}).update(res)
        return {label: {t: self._done[label][t] for t in names} for label in labels}


def clamp_to_absmax(result: SearchResult, absmax: float) -> SearchResult:
    """``result`` with its threshold lowered to ``absmax`` when above it (scale scaled alike):
    a fold's thresholds never exceed what its training folds saw."""
    if not (absmax > 0.0) or not (result.amax > absmax) or result.fallback:
        return result
    factor = absmax / result.amax
    return dataclasses.replace(result, amax=absmax,
                               scale=to_scale(float(result.scale) * factor))


# --------------------------------------------------------------------------- scoring


class HeldoutScorer:
    """Held-out fidelity of per-fold scale sets, one Q/DQ session with scales fed per run.

    Samples of one shape run together (up to the model's batch size, or ``MAX_CHUNK`` when the
    batch size is free); rows that only fill a fixed batch are dropped before comparing.
    """

    def __init__(self, model: PathLike, tensors: Sequence[str],
                 template: Mapping[str, float], heldout: Sequence[Sequence[dict]], *,
                 op_types: Sequence[str], per_channel: bool):
        from trtkld.data import input_specs_from_onnx

        self.session = ScaleFeedSession(model, {t: template[t] for t in tensors},
                                        op_types=op_types, per_channel=per_channel)
        self.tensors = list(self.session.tensors)
        fp32 = ort_session(model, quantized=False)
        self.output_names = self.session.output_names
        size, fixed = batch_limit(input_specs_from_onnx(model))
        # Two parts per fold: its first held-out samples (round 1, every candidate: at most
        # a third, at most ROUND1_PER_FOLD: round 1 is a cheap screen, so that the runtime
        # goes to round 2) and the rest (round 2, the finalists only).
        cut = [max(1, min(ROUND1_PER_FOLD, math.ceil(len(fold) / 3))) for fold in heldout]
        self.parts = [[list(fold[:c]) for fold, c in zip(heldout, cut)],
                      [list(fold[c:]) for fold, c in zip(heldout, cut)]]
        self.part_samples = [sum(len(f) for f in part) for part in self.parts]
        self.chunks = [[_shape_chunks(fold, size, fixed) for fold in part]
                       for part in self.parts]
        self.references = [[[[real_outputs(y, feeds, real)
                              for y in fp32.run(self.output_names, feeds)]
                             for feeds, real in fold] for fold in part]
                           for part in self.chunks]
        self.samples = sum(len(f) for f in heldout)
        first = next((y for part in self.references for fold in part for y in fold), [])
        self.classifier = bool(first) and is_classifier_output(tuple(first[0].shape))
        self._cache: dict[tuple, dict[str, dict[str, np.ndarray]]] = {}
        self.runs = 0

    def default_metric(self) -> str:
        return "top1" if self.classifier else "sqnr"

    def key_of(self, fold_scales: Sequence[Mapping[str, float]]) -> tuple:
        """What a scale set changes in the Q/DQ model (equal keys, equal scores)."""
        return tuple(np.asarray([np.float32(s[t]) for t in self.tensors], np.float32).tobytes()
                     for s in fold_scales)

    def terms(self, fold_scales: Sequence[Mapping[str, float]], part: int
              ) -> dict[str, dict[str, np.ndarray]]:
        """Per-sample terms (:func:`sample_terms`) of every held-out sample of ``part`` (0:
        round 1, 1: the rest), each fold's samples with that fold's scales."""
        key = (self.key_of(fold_scales), part)
        if key in self._cache:
            return self._cache[key]
        terms: dict[str, list] = {o: [] for o in self.output_names}
        for fold, scales in enumerate(fold_scales):
            for (feeds, real), ref in zip(self.chunks[part][fold],
                                          self.references[part][fold]):
                got = self.session.run(feeds, scales)
                self.runs += 1
                for o, y, q in zip(self.output_names, ref, got):
                    q = real_outputs(q, feeds, real)
                    per_row = y.ndim and y.shape[0] == real     # else the run is one sample
                    terms[o].append(sample_terms(y, q, real if per_row else 1))
        out = {o: {k: np.concatenate([t[k] for t in parts]) for k in parts[0]} if parts
               else {} for o, parts in terms.items()}
        self._cache[key] = out
        return out


def join_terms(*parts: Mapping[str, Mapping[str, np.ndarray]]
               ) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample terms of several sample sets, concatenated (empty sets skipped)."""
    parts = [p for p in parts if p and all(p.values())]
    return {o: {k: np.concatenate([p[o][k] for p in parts]) for k in parts[0][o]}
            for o in parts[0]}


def real_outputs(y: np.ndarray, feeds: Mapping[str, np.ndarray], real: int) -> np.ndarray:
    """``y`` without the rows that only filled a fixed batch. Only where the run was padded
    (``real`` below the rows fed) is axis 0 cut: an output whose batch axis is not the first
    (a recognizer's ``[T, N, C]``) is never cut by its time steps."""
    rows = next(iter(feeds.values())).shape[0]
    if real >= rows or y.ndim == 0 or y.shape[0] != rows:
        return y
    return y[:real]


def sample_terms(ref: np.ndarray, test: np.ndarray, samples: int) -> dict[str, np.ndarray]:
    """Per sample: signal and noise energy, cosine, and argmax agreement (rank-2 outputs). The
    output holds ``samples`` samples along axis 0, or one sample (``samples == 1``) whatever its
    shape. A non-finite INT8 value makes that sample's noise infinite."""
    from trtkld.fidelity import per_sample_cosine

    n = samples if ref.ndim and ref.shape[0] == samples else 1
    r = np.asarray(ref, np.float64).reshape(n, -1)
    t = np.asarray(test, np.float64).reshape(n, -1)
    bad = ~np.isfinite(t).all(axis=1)
    t = np.where(np.isfinite(t), t, 0.0)
    noise = np.einsum("ij,ij->i", r - t, r - t)
    noise[bad] = np.inf
    same = (ref.argmax(axis=1) == test.argmax(axis=1)).astype(np.float64) if (
        ref.ndim == 2 and ref.shape[1] > 1) else np.full(n, np.nan)
    return {"signal": np.einsum("ij,ij->i", r, r), "noise": noise,
            "cosine": per_sample_cosine(r, t), "same": same}


def metric_of_samples(per_sample: Mapping[str, Mapping[str, np.ndarray]], metric: str,
                      keep: Optional[np.ndarray] = None) -> float:
    """``metric`` recomputed from per-sample terms, over the samples ``keep`` selects (all by
    default): what :func:`trtkld.fidelity.metric_value` gives for the same samples."""
    from trtkld.fidelity import sqnr_db

    values = []
    for terms in per_sample.values():
        sel = slice(None) if keep is None else keep
        if metric == "sqnr":
            noise = float(np.sum(terms["noise"][sel]))
            values.append(sqnr_db(float(np.sum(terms["signal"][sel])), noise)
                          if math.isfinite(noise) else -math.inf)
        elif metric == "cosine":
            values.append(float(np.mean(terms["cosine"][sel])))
        elif metric == "top1":
            same = terms["same"][sel]
            if not np.isnan(same).all():
                return float(np.mean(same))
    if metric == "top1" or not values:
        return math.nan
    return min(values)


def jackknife_margin(a: Mapping, b: Mapping, metric: str) -> float:
    """Jackknife standard error (over held-out samples) of ``metric(a) - metric(b)``."""
    n = len(next(iter(next(iter(a.values())).values())))
    if n < 2:
        return math.nan
    diffs = []
    for i in range(n):
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        diffs.append(metric_of_samples(a, metric, keep) - metric_of_samples(b, metric, keep))
    diffs = np.asarray(diffs)
    if not np.all(np.isfinite(diffs)):
        return math.nan
    return float(np.sqrt((n - 1) / n * np.sum((diffs - diffs.mean()) ** 2)))


def noise_aware_order(candidates: Sequence[CandidateScore], metric: str
                      ) -> tuple[list[CandidateScore], dict[str, Any]]:
    """``candidates`` (given in candidate order) best first, and the tie record.

    The order: by ``metric``, then output SQNR; exact ties keep candidate order (earlier
    first). For ``top1`` (a discrete metric: a few samples give ties and coarse steps) the
    candidates statistically tied with the best one ``B`` come first: ``C`` is tied when
    ``top1(B) - top1(C)`` is at most the jackknife standard error of that difference over
    the held-out samples (:func:`jackknife_margin`; an exact tie is always tied, and so is a
    difference of one sample, whose standard error is exactly ``1/n``), and the tied
    ones are ordered by output SQNR on the same samples (then top-1, then candidate order).
    So no candidate ahead of the first one has a higher SQNR unless its top-1 is more than
    one standard error above it, and none's top-1 exceeds the first one's by more than
    ``top1(B) - top1(first)`` (itself within one standard error).

    The record (empty unless ``top1`` with 2 or more candidates): ``best_top1`` (``B``),
    ``tied`` (labels, in order), ``se`` (label -> the standard error of ``B`` minus it),
    ``applied`` (whether the first one is not ``B``).
    """
    by_key = sorted(candidates, key=CandidateScore.key, reverse=True)   # stable
    if metric != "top1" or len(by_key) < 2 or by_key[0].per_sample is None:
        return by_key, {}
    best = by_key[0]
    tied, se = [best], {}
    for c in by_key[1:]:
        err = jackknife_margin(best.per_sample, c.per_sample, "top1")
        se[c.label] = None if not math.isfinite(err) else round(float(err), 6)
        gap = best.key()[0] - c.key()[0]
        # A one-sample difference in n is exactly one SE (1/n): tied, whatever the rounding.
        if gap == 0.0 or (math.isfinite(err) and gap <= err * (1 + 1e-9) + 1e-12):
            tied.append(c)
    position = {c.label: i for i, c in enumerate(candidates)}
    tied.sort(key=lambda c: (-c.key()[1], -c.key()[0], position[c.label]))
    in_tie = {c.label for c in tied}
    order = tied + [c for c in by_key if c.label not in in_tie]
    return order, {"best_top1": best.label, "tied": [c.label for c in tied], "se": se,
                   "applied": order[0].label != best.label}


def _shape_chunks(samples: Sequence[Mapping[str, np.ndarray]], size: int, fixed: bool
                  ) -> list[tuple[dict[str, np.ndarray], int]]:
    """Runs of same-shape samples (data order kept within a shape): (feeds, real rows)."""
    groups: dict[tuple, list] = {}
    for sample in samples:
        groups.setdefault(tuple((k, v.shape) for k, v in sample.items()), []).append(sample)
    out = []
    for group in groups.values():
        out.extend(chunk_samples(group, size, fixed))
    return out


def _score(label: str, per_sample: dict, metric: str) -> CandidateScore:
    top1 = metric_of_samples(per_sample, "top1")
    n = len(next(iter(next(iter(per_sample.values())).values())))
    return CandidateScore(label, metric_of_samples(per_sample, "sqnr"),
                          metric_of_samples(per_sample, "cosine"),
                          None if math.isnan(top1) else top1,
                          metric_of_samples(per_sample, metric), per_sample=per_sample,
                          samples=n)


# --------------------------------------------------------------------------- orchestration


def output_measured_auto(
    model: PathLike,
    data: CalibrationData,
    *,
    options: AutoOptions = AutoOptions(),
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    rules: Optional[Sequence[Rule]] = None,
    quiet: bool = False,
) -> AutoOutcome:
    """Choose and apply the most output-faithful rule (module docstring).

    Args:
        model: FP32 ONNX model; data: the calibration data (never evaluation data).
        include / exclude: the tensors calibrated (as ``calibrate``); the Q/DQ model quantizes
            the inputs of ``op_types`` among them.
        method_options: per-method options (e.g. ``{"percentile": {"percentile": 99.9}}``) for
            the registry rules that do not fix their own.
    Returns:
        an :class:`AutoOutcome` covering every collected tensor.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    rules = list(rules) if rules is not None else candidate_rules(options.percentiles)
    prepared, _ = prepare_model(model)
    quantizable = quantizable_activations(model, op_types)
    if not quantizable:
        raise ModelError(f"model {model}: no input of {', '.join(op_types)} to measure auto on")
    # Folds are batches: with fewer batches than folds (but at least 2) use one fold per
    # batch rather than re-running the model one sample at a time.
    k = options.folds if not 2 <= len(data) < options.folds else len(data)
    per_fold = max(1, math.ceil(options.heldout / k))
    probe_tensors = quantizable if options.per_tensor else []
    folded = collect_folded(model, data, folds=k, num_bins=AUTO_BINS,
                            heldout_per_fold=per_fold, probe_tensors=probe_tensors,
                            probe_per_fold=options.probe_samples if options.per_tensor else 0,
                            include=include, exclude=exclude, quiet=quiet)
    whole = folded.whole()
    seconds["collect"] = time.perf_counter() - started
    tensors = [t for t in quantizable if t in whole]
    if not tensors:
        raise ModelError(f"model {model}: none of the tensors the Q/DQ model quantizes was "
                         "calibrated (check --include/--exclude)")
    if any(not fold for fold in folded.heldout):
        raise DataError(f"auto: a held-out fold has no real sample ({data.num_samples} "
                        f"calibration samples, {k} folds)")

    # Every rule on every fold's training histograms (quantized tensors only: they are scored).
    t0 = time.perf_counter()
    training = [folded.training(f) for f in range(k)]
    fold_results: list[dict[str, dict[str, SearchResult]]] = []
    for (train, _), raw in zip(training, apply_rules_many(rules, training, tensors,
                                                          method_options)):
        fold_results.append({label: {t: clamp_to_absmax(r, train[t].absmax)
                                     for t, r in res.items()} for label, res in raw.items()})
    whole_signed = folded.whole_signed()
    whole_results = WholeSetResults(rules, whole, whole_signed, method_options)
    seconds["search"] = time.perf_counter() - t0

    usable = [t for t in tensors
              if all(is_usable_scale(np.float32(fr[label][t].scale))
                     for fr in fold_results for label in fr)]
    t0 = time.perf_counter()
    scorer = HeldoutScorer(model, usable,
                           {t: fold_results[0][rules[0].label][t].scale for t in usable},
                           folded.heldout, op_types=op_types, per_channel=per_channel)
    metric = options.metric or scorer.default_metric()
    # Round 1: every rule on the first third of each fold's held-out samples. Round 2: the
    # FINALISTS best of them (distinct thresholds) on every held-out sample; the winner is the
    # best finalist. Any rule left out scored below every finalist on round 1's samples.
    fold_scales_of = {rule.label: [{t: fr[rule.label][t].scale for t in scorer.tensors}
                                   for fr in fold_results] for rule in rules}
    scores: dict[str, CandidateScore] = {}
    seen: dict[tuple, str] = {}
    for rule in rules:
        key = scorer.key_of(fold_scales_of[rule.label])
        score = _score(rule.label, scorer.terms(fold_scales_of[rule.label], 0), metric)
        score.duplicate_of = seen.get(key)
        seen.setdefault(key, rule.label)
        scores[rule.label] = score
    ranked, _ = noise_aware_order([sc for sc in scores.values() if sc.duplicate_of is None],
                                  metric)
    finalists = [sc.label for sc in ranked[:FINALISTS]]

    def full_score(label: str, fold_scales) -> CandidateScore:
        first = scorer.terms(fold_scales, 0)
        full = _score(label, join_terms(first, scorer.terms(fold_scales, 1)), metric)
        full.round1 = _score(label, first, metric)
        return full

    for label in finalists:
        scores[label] = full_score(label, fold_scales_of[label])
    for label, sc in scores.items():
        if sc.duplicate_of in finalists:
            scores[label] = dataclasses.replace(scores[sc.duplicate_of], label=label,
                                                duplicate_of=sc.duplicate_of)
    order, tie = noise_aware_order([scores[label] for label in finalists], metric)
    best_single = order[0]
    seconds["score"] = time.perf_counter() - t0

    tensor_rules = {t: best_single.label for t in whole}
    chosen = best_single.label
    if options.per_tensor:
        t0 = time.perf_counter()
        from trtkld.calibration.local import ConsumerProbe, choose_per_tensor

        probe = ConsumerProbe(prepared, scorer.tensors, op_types)
        fold_scales = []
        for f in range(k):
            # probe_samples training activations, from the folds after f (cost: one consumer
            # pass per candidate per sample, so it is capped, not k - 1 folds' worth).
            train_samples: dict[str, list[np.ndarray]] = {}
            for g in [(f + i) % k for i in range(1, k)]:
                for t, xs in folded.probes[g].items():
                    room = options.probe_samples - len(train_samples.get(t, []))
                    if room > 0:
                        train_samples.setdefault(t, []).extend(xs[:room])
            cands = {label: {t: fold_results[f][label][t].scale for t in scorer.tensors}
                     for label in finalists}          # the mix draws from the finalists
            pick = choose_per_tensor(probe, train_samples, cands, best_single.label)
            fold_scales.append({t: cands[pick[t]][t] for t in scorer.tensors})
        score = full_score(PER_TENSOR, fold_scales)
        scores[PER_TENSOR] = score
        # One rule over every full-scored candidate, the mix last (it loses exact ties).
        order, tie = noise_aware_order([scores[label] for label in finalists] + [score], metric)
        if order[0].label != PER_TENSOR:
            chosen = order[0].label
            tensor_rules = {t: chosen for t in whole}
        else:
            all_samples: dict[str, list[np.ndarray]] = {}
            for g in range(k):
                for t, xs in folded.probes[g].items():
                    all_samples.setdefault(t, []).extend(xs)
            whole_q = whole_results.get(finalists, scorer.tensors)
            cands = {label: {t: whole_q[label][t].scale for t in scorer.tensors}
                     for label in finalists}
            pick = choose_per_tensor(probe, all_samples, cands, best_single.label)
            tensor_rules.update(pick)
            chosen = PER_TENSOR
        seconds["per_tensor"] = time.perf_counter() - t0

    # The chosen rule(s) on the whole calibration set, for every collected tensor.
    by_label = {r.label: r for r in rules}
    needed = sorted(set(tensor_rules.values()), key=list(by_label).index)
    full: dict[str, SearchResult] = {}
    for label in needed:      # each tensor searched with its own rule only
        mine = [t for t in whole if tensor_rules[t] == label]
        full.update(whole_results.get([label], mine)[label])
    results = {}
    for t in whole:
        r = full[t]
        results[t] = dataclasses.replace(r, method="auto", chosen_method=tensor_rules[t])
    # The runner-up: next under the same rule (full-scored, distinct thresholds).
    runner = order[1] if len(order) > 1 else None
    margin = margin_se = math.nan
    if runner is not None:
        margin = scores[chosen].score - runner.score
        margin_se = jackknife_margin(scores[chosen].per_sample, runner.per_sample, metric)
    seconds["total"] = time.perf_counter() - started
    if not quiet:
        log.info("auto: %d Q/DQ runs on %d held-out samples", scorer.runs, scorer.samples)
    return AutoOutcome(results=results, chosen=chosen, metric=metric, scores=scores,
                       tensor_rules=tensor_rules, histograms=whole,
                       heldout_samples=scorer.samples, folds=k, seconds=seconds,
                       options=options, runner_up=None if runner is None else runner.label,
                       margin=margin, margin_se=margin_se, tie_break=tie)
