"""Issue 13's fast paths against plain references: the same histograms and cache bytes.

Fast paths: prefetching the next model run, freeing activations once binned, lazily loaded numba
kernels, searches deduplicated and run on threads. The reference is the plain loop (one tensor
at a time, one search per tensor, no threads, no prefetch) on the real demo model and photos.
"""
from __future__ import annotations

import pytest

from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.demo import DEMO_PREPROCESS, preprocess_options
from trtkld.histogram import AbsmaxTracker, HistogramSet
from trtkld.pipeline import (
    bins_for_methods,
    collect_histograms,
    results_to_cache,
    search_histograms,
)
from trtkld.search import DEFAULT_BINS, run_search

METHODS = ["ppq", "nvidia", "modelopt", "mse", "percentile", "max"]


@pytest.fixture(scope="module")
def demo(demo_model, demo_calib_dir):
    model = demo_model
    data = open_data(str(demo_calib_dir), input_specs_from_onnx(model), batch_size=4,
                     preprocess=preprocess_options(DEMO_PREPROCESS))
    return model, data, OnnxRuntimeCollector(model)


def _reference_histograms(collector, data, num_bins) -> HistogramSet:
    """Two passes with the plain per-tensor update, no threads, no prefetch."""
    tracker = AbsmaxTracker(collector.tensor_names)
    for batch in data:
        for name, x in collector.run(batch).items():
            tracker.update(name, x)
    hists = HistogramSet.from_absmax(tracker, num_bins)
    for batch in data:
        for name, x in collector.run(batch).items():
            hists.update(name, x)
    return hists


def _reference_cache_bytes(hists: HistogramSet, method: str) -> bytes:
    results = {}
    for name, hist in hists.items():
        if hist.num_bins > DEFAULT_BINS[method]:
            hist = hist.rebin(DEFAULT_BINS[method])
        results[name] = run_search(method, hist.counts, bin_width=hist.bin_width,
                                   hist_max=hist.hist_max)
    return results_to_cache(results, trt_version="10.9.0").to_bytes()


@pytest.mark.parametrize("prefetch", [False, True])
def test_fast_paths_write_the_reference_cache_bytes(demo, prefetch):
    model, data, collector = demo
    num_bins = bins_for_methods(METHODS)
    reference = _reference_histograms(collector, data, num_bins)
    hists = collect_histograms(model, data, num_bins=num_bins, quiet=True, collector=collector,
                               prefetch=prefetch)
    assert hists == reference
    for method in METHODS:
        fast = results_to_cache(search_histograms(hists, method), trt_version="10.9.0")
        assert fast.to_bytes() == _reference_cache_bytes(reference, method), method
