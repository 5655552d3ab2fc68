"""Calibration pipeline: data -> collect -> histogram -> search -> cache.

This module only wires the stages together; each stage's rules live in its own sub-package.
Histograms are gathered in two passes, as PPQ does: pass 1 finds every tensor's absmax over the
whole calibration set, pass 2 fills fixed-range |x| histograms. When pass 1's activations fit
``memory_budget_bytes`` they are kept and pass 2 reads them instead of running the model again;
the histograms are identical either way (integer counts over the same values).
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from trtkld.cache import CalibrationCache
from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import CalibrationData
from trtkld.errors import HistogramError, SearchError
from trtkld.histogram import AbsmaxTracker, HistogramSet, preload_kernels
from trtkld.search import (
    DEFAULT_BINS,
    GuardFinding,
    SearchRequest,
    SearchResult,
    guard_findings,
    run_searches,
)
from trtkld.search.registry import check_methods, get_method

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

EXECUTORS = ("process", "ray")   # where collect_histograms runs: here, or sharded on Ray
DEFAULT_MEMORY_BUDGET = 0  # bytes of pass-1 activations kept to skip the second model pass
DEFAULT_PREFETCH = False  # run batch k+1 while binning batch k (measured: README Benchmarks)


@dataclass
class CalibrationOutcome:
    """One method's thresholds for every tensor, the cache they make (if asked), and the guard's
    findings (tensor name -> problems; only tensors with a problem are listed)."""

    method: str
    results: dict[str, SearchResult]
    cache: Optional[CalibrationCache]      # None when no TensorRT version was given
    findings: dict[str, list[GuardFinding]] = field(default_factory=dict)


def _progress(batches, *, data: CalibrationData, desc: str, quiet: bool):
    """Yield ``batches`` (pairs of (batch, item)) while a tqdm bar counts images: images/s, ETA."""
    if quiet:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=data.num_samples, desc=desc, unit="img", dynamic_ncols=True,
              leave=False) as bar:
        for batch, item in batches:
            yield batch, item
            del item  # let the caller free a batch's activations before the next one runs
            # a padded last batch repeats samples; the bar counts real images only
            bar.update(min(_batch_size(batch), bar.total - bar.n))


def _batch_size(batch) -> int:
    first = next(iter(batch.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def bins_for_methods(methods: Sequence[str]) -> int:
    """Histogram bin count that serves every method in ``methods`` exactly.

    Histograms are collected once at the largest bin count and rebinned by summing adjacent
    bins, which is exact only for power-of-two factors.
    """
    check_methods(methods)
    counts = sorted({DEFAULT_BINS[m] for m in methods})
    largest = counts[-1]
    for count in counts:
        ratio = largest // count
        if largest % count or ratio & (ratio - 1):
            raise SearchError(
                f"methods {list(methods)} need bin counts {counts}, which are not power-of-two "
                "multiples of each other; calibrate them separately"
            )
    return largest


def collect_histograms(
    model: PathLike,
    data: CalibrationData,
    *,
    num_bins: int,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    quiet: bool = False,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    hist_max: Optional[Mapping[str, float]] = None,
    collector: Optional[OnnxRuntimeCollector] = None,
    timings: Optional[dict[str, float]] = None,
    prefetch: bool = DEFAULT_PREFETCH,
) -> HistogramSet:
    """Two-pass |x| histograms of every float activation of ``model`` over ``data``.

    Returns a :class:`HistogramSet` in model tensor order, each with ``num_bins`` bins over
    ``[0, absmax]``. NaN/Inf values are counted per tensor, never binned.

    ``hist_max`` fixes each tensor's range instead of pass 1 (one model pass only); values above
    it land in the last bin. It lets shards of a data set, collected on several machines with the
    same ranges, be merged exactly (:meth:`HistogramSet.merge`).

    ``prefetch`` runs the model on batch k+1 while batch k is binned (see
    :meth:`OnnxRuntimeCollector.runs`); the histograms are the same either way.

    ``timings``, when given, receives the wall seconds of each pass (``"pass 1"``,
    ``"pass 2"``), model runs and histogramming together, for benchmarks.
    """
    clock = time.perf_counter
    timings = {} if timings is None else timings
    start = clock()
    preload_kernels()  # numba loads while ONNX Runtime builds and runs the model
    collector = collector or OnnxRuntimeCollector(model, include=include, exclude=exclude)
    if hist_max is not None:
        hists = HistogramSet.from_given_ranges(collector.tensor_names, hist_max, num_bins)
        for _, activations in _progress(
            collector.runs(data, prefetch=prefetch), data=data, desc="histograms", quiet=quiet
        ):
            hists.update_many(activations)
            del activations
        timings["pass 2"] = clock() - start
        _warn_nonfinite(hists)
        return hists

    tracker = AbsmaxTracker(collector.tensor_names)
    kept: Optional[list[tuple[object, dict[str, np.ndarray]]]] = []
    kept_bytes = 0
    pass1 = collector.runs(data, prefetch=prefetch)
    for batch, activations in _progress(pass1, data=data, desc="pass 1/2 (absmax)", quiet=quiet):
        tracker.update_many(activations)
        if kept is not None:
            kept_bytes += sum(v.nbytes for v in activations.values())
            if kept_bytes <= memory_budget_bytes:
                kept.append((batch, activations))
            else:
                if memory_budget_bytes > 0:
                    logger.info(
                        "activations exceed the %.2f GiB memory budget: running the model "
                        "again for pass 2", memory_budget_bytes / 2**30,
                    )
                kept = None
        del activations  # binned: free it before the next batch's outputs are allocated

    timings["pass 1"] = clock() - start
    start = clock()
    # Tensors whose type was unknown until the first run may have been dropped as non-float.
    names = [n for n in collector.tensor_names if n in tracker]
    hists = HistogramSet.from_absmax({n: tracker[n] for n in names}, num_bins)
    if kept is not None:
        pass2 = iter(kept)
    else:
        pass2 = collector.runs(data, prefetch=prefetch)
    for _, activations in _progress(pass2, data=data, desc="pass 2/2 (histograms)", quiet=quiet):
        hists.update_many({n: activations[n] for n in names})
        del activations
    timings["pass 2"] = clock() - start
    _warn_nonfinite(hists)
    return hists


def _warn_nonfinite(hists: HistogramSet) -> None:
    """One warning line per kind (NaN/Inf values, all-zero tensors) with a count and the first
    names; the full list is logged at DEBUG level (``-v`` on the command line)."""
    nonfinite = [
        f"{name!r} ({h.num_nan} NaN, {h.num_posinf} +Inf, {h.num_neginf} -Inf)"
        for name, h in hists.items() if h.num_nan + h.num_posinf + h.num_neginf
    ]
    zero = [
        repr(name) for name, h in hists.items()
        if not (h.num_nan + h.num_posinf + h.num_neginf) and h.hist_max == 0
    ]
    for items, what in (
        (nonfinite, "had NaN/Inf values, left out of their histograms"),
        (zero, "are zero everywhere; their scales are the all-zero fallback"),
    ):
        if not items:
            continue
        shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        logger.warning("%d tensor(s) %s: %s", len(items), what, shown)
        for item in items:
            logger.debug("tensor %s %s", item, what)


def _compile_overrides(overrides: Optional[Mapping[str, str]]) -> list[tuple[re.Pattern, str]]:
    compiled = []
    for pattern, method in (overrides or {}).items():
        get_method(method, where=f"per-tensor method override {pattern!r}={method!r}: ")
        try:
            compiled.append((re.compile(pattern), method))
        except re.error as exc:
            raise SearchError(f"per-tensor method override {pattern!r}: bad regex: {exc}") from exc
    return compiled


def method_for_tensor(
    name: str, method: str, overrides: Sequence[tuple[re.Pattern, str]]
) -> str:
    """The method ``name`` is searched with: the first matching override, else ``method``."""
    for pattern, override in overrides:
        if name == pattern.pattern or pattern.fullmatch(name):
            return override
    return method


def search_histograms(
    hists: HistogramSet,
    method: str,
    *,
    method_overrides: Optional[Mapping[str, str]] = None,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> dict[str, SearchResult]:
    """Run ``method`` (or a per-tensor override) on every histogram, in ``hists`` order.

    ``method_options`` maps a method name to keyword options for it, e.g.
    ``{"percentile": {"percentile": 99.9}}``. Histograms with more bins than the method's
    default are rebinned exactly first.
    """
    requests = search_requests(hists, method, method_overrides=method_overrides,
                               method_options=method_options)
    # identical histograms (a tensor and its copy) are searched once; the rest on 2 threads
    return {r.name: result for r, result in zip(requests, run_searches(requests))}


def search_requests(
    hists: HistogramSet,
    method: str,
    *,
    method_overrides: Optional[Mapping[str, str]] = None,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> list[SearchRequest]:
    """The requests :func:`search_histograms` runs, in ``hists`` order (for callers that
    batch several methods' requests through one :func:`trtkld.search.batch.run_searches`)."""
    overrides = _compile_overrides(method_overrides)
    requests = []
    for name, hist in hists.items():
        chosen = method_for_tensor(name, method, overrides)
        wanted = DEFAULT_BINS[chosen]
        if hist.num_bins > wanted and hist.num_bins % wanted == 0:
            hist = hist.rebin(wanted)
        requests.append(SearchRequest(name, chosen, hist.counts, hist.bin_width, hist.hist_max,
                                      dict((method_options or {}).get(chosen, {}))))
    return requests


def guard_results(
    hists: HistogramSet,
    results: Mapping[str, SearchResult],
    *,
    max_clipped_fraction: Optional[float] = None,
    max_sqnr_drop_db: Optional[float] = None,
) -> dict[str, list[GuardFinding]]:
    """Tensors whose threshold clips too much mass or loses too much histogram SQNR vs ``max``.

    Deliberate all-zero fallbacks are not findings. Limits default to the search package's
    (``trtkld.search.quality``). Returns only the tensors with findings, in ``hists`` order.
    """
    limits = {}
    if max_clipped_fraction is not None:
        limits["max_clipped_fraction"] = max_clipped_fraction
    if max_sqnr_drop_db is not None:
        limits["max_sqnr_drop_db"] = max_sqnr_drop_db
    flagged: dict[str, list[GuardFinding]] = {}
    for name, hist in hists.items():
        result = results.get(name)
        if result is None or hist.hist_max == 0:
            continue
        found = [
            f
            for f in guard_findings(hist.counts, hist.bin_width, result, name=name, **limits)
            if f.kind != "fallback"
        ]
        if found:
            flagged[name] = found
    return flagged


def results_to_cache(
    results: Mapping[str, SearchResult],
    *,
    trt_version: str,
    algorithm: str = "EntropyCalibration2",
) -> CalibrationCache:
    """A TensorRT calibration cache holding each result's scale, in ``results`` order."""
    return CalibrationCache.from_trt_version(
        trt_version, algorithm, {name: np.float32(r.scale) for name, r in results.items()}
    )


def calibrate(
    model: PathLike,
    data: CalibrationData,
    methods: Sequence[str],
    *,
    trt_version: Optional[str] = None,
    algorithm: str = "EntropyCalibration2",
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    method_overrides: Optional[Mapping[str, str]] = None,
    quiet: bool = False,
    histograms: Optional[HistogramSet] = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    method_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    hist_max: Optional[Mapping[str, float]] = None,
    guard_limits: Optional[Mapping[str, float]] = None,
    executor: str = "process",
    shards: Optional[int] = None,
    ray_address: Optional[str] = "local",
) -> tuple[HistogramSet, dict[str, CalibrationOutcome]]:
    """Collect histograms once (unless given) and search them with every method in ``methods``.

    Each outcome carries the guard's findings (:func:`guard_results` with ``guard_limits``)
    and, when ``trt_version`` is given, its TensorRT cache (otherwise ``cache`` is None: only
    writing a cache needs a TensorRT version).
    ``executor="ray"`` collects on a Ray cluster (``ray_address``: ``"local"`` or a cluster's
    address) in ``shards`` contiguous shards of the files (default: one per CPU); the
    histograms, and so the caches, are byte-identical to ``executor="process"``.
    """
    if executor not in EXECUTORS:
        from trtkld.scaleout.errors import ScaleOutError

        raise ScaleOutError(f"executor must be one of {EXECUTORS}, found {executor!r}")
    override_methods = list((method_overrides or {}).values())
    num_bins = bins_for_methods(list(methods) + override_methods)
    if histograms is None and executor == "ray":
        from trtkld.scaleout import collect_histograms_ray

        histograms = collect_histograms_ray(
            model, data, num_bins=num_bins, shards=shards, address=ray_address,
            include=include, exclude=exclude, hist_max=hist_max, quiet=quiet,
        )
        _warn_nonfinite(histograms)
    if histograms is None:
        histograms = collect_histograms(
            model,
            data,
            num_bins=num_bins,
            include=include,
            exclude=exclude,
            quiet=quiet,
            memory_budget_bytes=memory_budget_bytes,
            hist_max=hist_max,
        )
    if len(histograms) == 0:
        raise HistogramError(
            "there are no tensors to calibrate (the histograms are empty, or --include/--exclude "
            "left none); no cache is written"
        )
    outcomes: dict[str, CalibrationOutcome] = {}
    for method in methods:
        results = search_histograms(
            histograms, method, method_overrides=method_overrides, method_options=method_options
        )
        cache = None
        if trt_version is not None:
            cache = results_to_cache(results, trt_version=trt_version, algorithm=algorithm)
        findings = guard_results(histograms, results, **dict(guard_limits or {}))
        outcomes[method] = CalibrationOutcome(method, results, cache, findings)
    return histograms, outcomes


def model_fingerprint(model: Optional[PathLike]) -> Optional[str]:
    """sha256 of the ONNX model file (None without a model)."""
    if model is None:
        return None
    from trtkld._io import file_sha256

    return file_sha256(model)


def fingerprints(model: Optional[PathLike], data: Optional[CalibrationData]) -> dict:
    """What a calibration is made from, for its caches' sidecars: ``model_sha256`` (None
    without a model), ``data_sha256`` and ``data`` (kind, sample count, batching, resolved
    preprocessing; :meth:`CalibrationData.fingerprint`). A cache is reused only when these
    match the model and data at hand (``trtkld.cache.sidecar.provenance_problem``)."""
    fingerprint = dict(data.fingerprint()) if data is not None else {}
    return {
        "model_sha256": model_fingerprint(model),
        "data_sha256": fingerprint.pop("data_sha256", None),
        "data": fingerprint,
    }
