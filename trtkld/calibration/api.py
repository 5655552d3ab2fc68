"""``trtkld.calibrate()``: model + data -> a :class:`Calibration` holding every method's thresholds.

The stages (data -> collect -> histogram -> search) are wired by :mod:`trtkld.pipeline`; this
module is the public face: it opens whatever data the caller has, validates the methods and
their options against the registry (:mod:`trtkld.search.registry`) and returns one object from
which caches, histograms and Q/DQ models are written. No TensorRT version is needed until a
cache is written.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from trtkld import pipeline
from trtkld.cache import CalibrationCache
from trtkld.calibration.cachefile import (
    DEFAULT_ALGORITHM,
    results_cache,
    write_calibration_cache,
)
from trtkld.data import CalibrationData, PreprocessOptions, input_specs_from_onnx, open_data
from trtkld.errors import DataError, SearchError
from trtkld.histogram import HistogramSet
from trtkld.pipeline import DEFAULT_MEMORY_BUDGET, CalibrationOutcome, fingerprints
from trtkld.search import GuardFinding, SearchResult
from trtkld.search.registry import check_methods, options_for_methods

PathLike = Union[str, "os.PathLike[str]"]
AUTO_DEFAULT: Any = object()   # marker: the output-measured auto with its default options


@dataclass
class Calibration:
    """Every requested method's per-tensor thresholds over one set of histograms.

    ``results[method]``: tensor name -> :class:`SearchResult` (model tensor order).
    ``findings[method]``: the guard's findings (only flagged tensors). ``options[method]``: the
    search options as recorded in a cache's sidecar; ``sidecar_extra[method]``: further sidecar
    fields (e.g. how a measured choice was made). ``provenance``: what the thresholds were made
    from (model and data sha256, preprocessing; :func:`trtkld.pipeline.cache_provenance`),
    recorded in every sidecar. ``model`` is None when the calibration started from saved
    histograms (then :meth:`to_qdq` needs a model).
    """

    model: Optional[str]
    histograms: HistogramSet
    outcomes: dict[str, CalibrationOutcome]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    collector: str = "onnxruntime"
    sidecar_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    auto: Optional[Any] = None    # trtkld.calibration.auto.AutoOutcome of an output-measured auto

    @property
    def methods(self) -> list[str]:
        return list(self.outcomes)

    @property
    def results(self) -> dict[str, dict[str, SearchResult]]:
        return {m: o.results for m, o in self.outcomes.items()}

    @property
    def findings(self) -> dict[str, dict[str, list[GuardFinding]]]:
        return {m: o.findings for m, o in self.outcomes.items()}

    def _method(self, method: Optional[str]) -> str:
        if method is None:
            if len(self.outcomes) != 1:
                raise SearchError(f"this calibration holds methods {self.methods}; name one "
                                  "with method=")
            return self.methods[0]
        if method not in self.outcomes:
            raise SearchError(f"method {method!r} was not calibrated; this calibration holds "
                              f"{self.methods}")
        return method

    def scales(self, method: Optional[str] = None) -> dict[str, np.float32]:
        """Tensor -> the float32 scale a TensorRT cache stores (activation units per step)."""
        return {n: np.float32(r.scale) for n, r in self.results[self._method(method)].items()}

    def cache(self, method: Optional[str] = None, *, trt_version: Optional[str] = None,
              algorithm: str = DEFAULT_ALGORITHM) -> CalibrationCache:
        """The TensorRT cache of ``method`` (``trt_version`` None: installed TensorRT's, else
        the default with a warning)."""
        return results_cache(self.results[self._method(method)], trt_version=trt_version,
                             algorithm=algorithm)

    def write_cache(self, path: PathLike, method: Optional[str] = None, *,
                    trt_version: Optional[str] = None,
                    algorithm: str = DEFAULT_ALGORITHM) -> bytes:
        """Write ``method``'s cache and its sidecar atomically; returns the cache bytes."""
        method = self._method(method)
        return write_calibration_cache(
            path, self.results[method], method=method, options=self.options.get(method, {}),
            trt_version=trt_version, algorithm=algorithm, collector=self.collector,
            extra=self.sidecar_extra.get(method), provenance=self.provenance,
        )

    def to_qdq(self, path: PathLike, method: Optional[str] = None, *,
               model: Optional[PathLike] = None, op_types: Optional[Sequence[str]] = None,
               per_channel: bool = True):
        """Write a Q/DQ ONNX model with ``method``'s activation scales; a ``QdqSummary``."""
        from trtkld.qdq import DEFAULT_OP_TYPES, write_qdq_model

        source = model if model is not None else self.model
        if source is None:
            raise DataError("to_qdq needs the FP32 ONNX model: this calibration started from "
                            "saved histograms; pass model=")
        method = self._method(method)
        # Tensors left out on purpose (calibrate --keep-float) stay float in the Q/DQ model too.
        keep = self.sidecar_extra.get(method, {}).get("keep_float", ())
        return write_qdq_model(source, self.scales(method), path,
                               op_types=tuple(op_types or DEFAULT_OP_TYPES),
                               per_channel=per_channel, keep_float=keep)

    def replace_results(self, method: str, results: Mapping[str, SearchResult], *,
                        record: Optional[Mapping[str, Any]] = None,
                        findings: Optional[Mapping[str, list[GuardFinding]]] = None,
                        sidecar: Optional[Mapping[str, Any]] = None) -> None:
        """Swap ``method``'s thresholds (e.g. refined or output-measured ones).

        ``record`` adds to its recorded search options; ``findings`` are the guard's findings
        for the new thresholds (none given: dropped, the old ones no longer apply);
        ``sidecar`` adds sidecar fields for its cache.
        """
        method = self._method(method)
        self.outcomes[method] = CalibrationOutcome(method=method, results=dict(results),
                                                   cache=None, findings=dict(findings or {}))
        if record:
            self.options[method] = {**self.options.get(method, {}), **dict(record)}
        if sidecar:
            self.sidecar_extra[method] = {**self.sidecar_extra.get(method, {}), **dict(sidecar)}


def open_calibration_data(
    model: Optional[PathLike],
    data: Any,
    *,
    batch_size: Optional[int] = None,
    preprocess: Union[PreprocessOptions, str, None] = None,
    last_batch: str = "pad",
    max_samples: Optional[int] = None,
) -> CalibrationData:
    """``data`` as :class:`CalibrationData`: given as is, else opened for ``model``'s inputs.

    ``data``: anything ``trtkld calibrate --data`` / ``--data-loader`` takes (image folder,
    .npy / .npz file or folder, ``"module:function"``), a callable returning dicts, or a
    re-iterable collection of dicts (input name -> array). ``preprocess``: options or a preset
    name (``"imagenet"``, ``"caffe"``, ``"unit"``, ``"raw"``).
    """
    if isinstance(data, CalibrationData):
        return data
    if model is None:
        raise DataError("opening calibration data needs the ONNX model (its inputs)")
    if isinstance(preprocess, str):
        preprocess = PreprocessOptions.preset(preprocess)
    return open_data(data, input_specs_from_onnx(model), batch_size=batch_size,
                     preprocess=preprocess, last_batch=last_batch, max_samples=max_samples)


def _merged_options(
    routed: dict[str, dict[str, Any]],
    per_method: Optional[Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """``routed`` with ``per_method``'s options added (they win on the same name)."""
    merged = {m: dict(o) for m, o in routed.items()}
    for method, options in (per_method or {}).items():
        check_methods([method])
        merged.setdefault(method, {}).update(options)
    return merged


def calibrate(
    model: Optional[PathLike],
    data: Any = None,
    methods: Union[str, Iterable[str]] = ("ppq",),
    *,
    histograms: Optional[HistogramSet] = None,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    tensor_methods: Optional[Mapping[str, str]] = None,
    batch_size: Optional[int] = None,
    preprocess: Union[PreprocessOptions, str, None] = None,
    last_batch: str = "pad",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    hist_max: Optional[Mapping[str, float]] = None,
    guard_limits: Optional[Mapping[str, float]] = None,
    quiet: bool = False,
    collector: str = "onnxruntime",
    auto: Optional[Any] = AUTO_DEFAULT,
    executor: str = "process",
    shards: Optional[int] = None,
    ray_address: Optional[str] = "local",
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    op_types: Optional[Sequence[str]] = None,
    per_channel: bool = True,
    **search_options: Any,
) -> Calibration:
    """Collect |x| histograms of ``model`` over ``data`` once and search them with ``methods``.

    Args:
        model: FP32 ONNX model (None only with ``histograms``).
        data: see :func:`open_calibration_data`; ignored with ``histograms``.
        methods: names from :func:`trtkld.search.available_methods` (a list or "a,b").
        histograms: saved histograms to search instead of running the model.
        include, exclude: tensor-name regexes (full match) to calibrate / skip.
        tensor_methods: regex -> method for matching tensors (first match wins).
        memory_budget_bytes: pass-1 activations kept to skip the second model pass.
        hist_max: fixed per-tensor ranges instead of pass 1 (shards merge exactly).
        guard_limits: ``max_clipped_fraction`` / ``max_sqnr_drop_db`` for the guard.
        collector: what collected the histograms, as the sidecar records it (``"tensorrt"``
            when ``histograms`` came from the GPU collector).
        auto: how ``auto`` is chosen when it is asked for and the model runs on ``data``: a
            :class:`trtkld.calibration.auto.AutoOptions` (default: its defaults) for the
            output-measured auto (the rule whose Q/DQ model is most faithful to FP32 on
            calibration samples held out from the histograms; its one collection serves every
            other method too), or None for the per-tensor histogram-SQNR rule. From saved
            ``histograms`` only the histogram rule is possible.
        executor: ``"process"`` (here) or ``"ray"``: collect on a Ray cluster in ``shards``
            contiguous shards of the data files (default: one per CPU of the cluster) -- the
            same histograms and caches, byte for byte. ``ray_address``: ``"local"`` starts a
            local cluster for the call; else a running cluster's address. Data and model must
            be files reachable by every worker at the same path (``pip install 'trtkld[ray]'``).
        method_options: options already routed per method (``{"percentile": {"percentile":
            99.9}}``, as :func:`trtkld.search.registry.options_for_methods` makes them); they
            add to (and win over) ``search_options``.
        op_types, per_channel: the Q/DQ placement the output-measured auto measures its
            candidate models with (default: :data:`trtkld.qdq.DEFAULT_OP_TYPES`, per-channel
            weights -- as :meth:`Calibration.to_qdq` writes them).
        search_options: method options from the registry, e.g. ``percentile=99.9``; each goes
            to every method that takes it.
    Raises:
        SearchError for an unknown method or option, DataError for bad data, ModelError for a
        bad model (all :class:`trtkld.errors.TrtkldError`).
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(check_methods(methods)))
    if not methods:
        raise SearchError("no method given; choose from trtkld.search.available_methods()")
    method_options = _merged_options(options_for_methods(search_options), method_options)
    overrides = dict(tensor_methods or {})
    calib_data = None
    if histograms is None:
        calib_data = open_calibration_data(model, data, batch_size=batch_size,
                                           preprocess=preprocess, last_batch=last_batch)
    measured = None
    if "auto" in methods and calib_data is not None and auto is not None:
        from trtkld.calibration.auto import AutoOptions, output_measured_auto

        if executor == "ray":
            from trtkld.scaleout.errors import ScaleOutError

            raise ScaleOutError(
                "executor='ray' shards the histogram collection, but the output-measured auto "
                "runs the model on held-out folds in one process; pass auto=None (CLI: "
                "--auto-by histogram) to choose auto's rules from the sharded histograms, or "
                "calibrate auto without Ray")

        if overrides or hist_max is not None:
            raise SearchError("the output-measured auto chooses each tensor's rule on its own "
                              "collection; drop tensor_methods / hist_max (or pass auto=None)")
        measured = output_measured_auto(
            model, calib_data, options=AutoOptions() if auto is AUTO_DEFAULT else auto,
            include=include, exclude=exclude, method_options=method_options, quiet=quiet,
            per_channel=per_channel, **({"op_types": tuple(op_types)} if op_types else {}))
        histograms = measured.histograms    # exactly the histograms the pipeline collects
    histograms, outcomes = pipeline.calibrate(
        model, calib_data, methods,
        include=include, exclude=exclude, method_overrides=overrides, quiet=quiet,
        histograms=histograms, memory_budget_bytes=memory_budget_bytes,
        method_options=method_options, hist_max=hist_max, guard_limits=guard_limits,
        executor=executor, shards=shards, ray_address=ray_address,
    )
    recorded = {}
    for method in methods:
        options = dict(method_options.get(method, {}))
        if overrides:
            options["tensor_method"] = dict(overrides)
        recorded[method] = options
    cal = Calibration(model=None if model is None else os.fspath(model),
                      histograms=histograms, outcomes=outcomes, options=recorded,
                      collector=collector, provenance=fingerprints(model, calib_data))
    if measured is not None:
        from trtkld.pipeline import guard_results

        record = measured.to_json()
        record.pop("seconds", None)       # sidecars stay deterministic
        cal.replace_results(
            "auto", measured.results,
            record={"measured": {"folds": measured.options.folds,
                                 "heldout": measured.options.heldout,
                                 "metric": measured.metric,
                                 "per_tensor": measured.options.per_tensor}},
            findings=guard_results(histograms, measured.results, **dict(guard_limits or {})),
            sidecar={"auto": record})
        cal.auto = measured
    return cal
