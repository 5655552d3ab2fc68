"""run_searches: identical histograms searched once, the rest on threads, results in order.

The oracle is one plain ``run_search`` per tensor.
"""
from __future__ import annotations

import numpy as np
import pytest

from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.demo import DEMO_PREPROCESS, preprocess_options
from trtkld.errors import SearchError
from trtkld.histogram import HistogramSet
from trtkld.pipeline import collect_histograms
from trtkld.search import DEFAULT_BINS, SearchRequest, run_search, run_searches
from trtkld.search import batch as search_batch


def _requests(hists: HistogramSet, method: str) -> list[SearchRequest]:
    out = []
    for name, hist in hists.items():
        hist = hist.rebin(DEFAULT_BINS[method]) if hist.num_bins > DEFAULT_BINS[method] else hist
        out.append(SearchRequest(name, method, hist.counts, hist.bin_width, hist.hist_max))
    return out


def test_demo_model_has_tensors_with_identical_histograms(demo_model, demo_calib_dir):
    # the case deduplication is for: an Add output and the tensor that copies it
    model = demo_model
    data = open_data(str(demo_calib_dir), input_specs_from_onnx(model), batch_size=4,
                     preprocess=preprocess_options(DEMO_PREPROCESS))
    collector = OnnxRuntimeCollector(model)
    hists = collect_histograms(model, data, num_bins=2048, quiet=True, collector=collector)
    firsts, owner = search_batch.unique_requests(_requests(hists, "nvidia"))
    assert len(firsts) < len(hists)
    assert len(owner) == len(hists)


def test_run_searches_equals_one_search_per_tensor_in_order():
    rng = np.random.default_rng(3)
    base = [rng.poisson(rng.uniform(0, 50, 2048)).astype(np.int64) for _ in range(6)]
    counts = [base[0], base[1], base[0].copy(), base[2], base[3], base[1].copy(), base[4],
              base[5], np.zeros(2048, np.int64)]
    for method in ("nvidia", "modelopt", "mse", "ppq"):
        requests = [SearchRequest(f"t{i}", method, c, 0.01, 20.48) for i, c in enumerate(counts)]
        expected = [run_search(method, c, bin_width=0.01, hist_max=20.48) for c in counts]
        for workers in (1, 2, 3):
            got = run_searches(requests, workers=workers)
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert (g.method, g.amax, g.scale, g.index, g.fallback) == (
                    e.method, e.amax, e.scale, e.index, e.fallback)
                assert g.clipped_fraction == e.clipped_fraction
                np.testing.assert_array_equal(g.divergences, e.divergences)
        got = run_searches(requests)
        assert got[0] is got[2] and got[1] is got[5]  # duplicates share one search
        assert got[0] is not got[3]


def test_requests_differing_in_range_or_options_are_not_merged():
    counts = np.arange(2048, dtype=np.int64)
    requests = [
        SearchRequest("a", "percentile", counts, 0.01, 20.48, {"percentile": 99.0}),
        SearchRequest("b", "percentile", counts, 0.01, 20.48, {"percentile": 99.9}),
        SearchRequest("c", "percentile", counts, 0.02, 40.96, {"percentile": 99.0}),
        SearchRequest("d", "max", counts, 0.01, 20.48),
    ]
    firsts, _ = search_batch.unique_requests(requests)
    assert firsts == [0, 1, 2, 3]
    got = run_searches(requests)
    assert got[0].amax != got[1].amax and got[2].amax == 2 * got[0].amax


def test_hash_collision_cannot_merge_different_histograms(monkeypatch):
    monkeypatch.setattr(SearchRequest, "key", lambda self: ("same",))
    a = np.zeros(2048, np.int64)
    a[10] = 5
    b = np.zeros(2048, np.int64)
    b[900] = 5
    requests = [SearchRequest("a", "max", a, 0.01, 20.48), SearchRequest("b", "nvidia", b, 0.01,
                                                                          20.48)]
    firsts, owner = search_batch.unique_requests(requests)
    assert firsts == [0, 1] and owner == [0, 1]


def test_search_errors_name_the_first_failing_tensor():
    good = np.ones(2048, np.int64)
    bad = np.ones(100, np.int64)  # ppq needs a multiple of 128 bins
    requests = [SearchRequest(f"t{i}", "ppq", good, 0.01, 20.48) for i in range(5)]
    requests += [SearchRequest("broken", "ppq", bad, 0.01, 1.0),
                 SearchRequest("later", "ppq", bad, 0.02, 2.0)]
    for workers in (1, 2):
        with pytest.raises(SearchError, match="tensor 'broken'.*multiple of 128"):
            run_searches(requests, workers=workers)
