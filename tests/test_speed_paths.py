"""The fast paths of issue 13 against plain references: same histograms, same cache bytes.

Fast paths: prefetching the next model run, freeing activations once binned, lazily loaded
numba kernels, searches deduplicated and run on threads. The references are the plain loops
(one tensor at a time, one search per tensor, no threads).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.demo import DEMO_CALIB_DIR, DEMO_PREPROCESS, demo_model_path, preprocess_options
from trtkld.errors import ModelError, SearchError
from trtkld.histogram import AbsmaxTracker, HistogramSet
from trtkld.pipeline import (
    bins_for_methods,
    collect_histograms,
    results_to_cache,
    search_histograms,
)
from trtkld.search import DEFAULT_BINS, SearchRequest, run_search, run_searches
from trtkld.search import batch as search_batch

METHODS = ["ppq", "nvidia", "modelopt", "mse", "percentile", "max"]


@pytest.fixture(scope="module")
def demo():
    model = str(demo_model_path())
    data = open_data(str(DEMO_CALIB_DIR), input_specs_from_onnx(model), batch_size=4,
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


def _requests(hists: HistogramSet, method: str) -> list[SearchRequest]:
    out = []
    for name, hist in hists.items():
        hist = hist.rebin(DEFAULT_BINS[method]) if hist.num_bins > DEFAULT_BINS[method] else hist
        out.append(SearchRequest(name, method, hist.counts, hist.bin_width, hist.hist_max))
    return out


def test_demo_model_has_tensors_with_identical_histograms(demo):
    # the case deduplication is for: an Add output and the tensor that copies it
    model, data, collector = demo
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


# --------------------------------------------------------------------------- prefetching runs
def _small_model(path) -> str:
    """x[N,4] -> Mul(2) -> y1 -> Relu -> y2 (a batch of the wrong width makes ORT fail)."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y1"]),
        helper.make_node("Relu", ["y1"], ["y2"]),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _batches(n: int):
    from trtkld.data import Batch

    rng = np.random.default_rng(0)
    return [Batch(inputs={"x": rng.normal(size=(2, 4)).astype(np.float32)},
                  sources=(f"s{i}",)) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_prefetched_runs_equal_plain_runs_in_order(tmp_path, n):
    collector = OnnxRuntimeCollector(_small_model(tmp_path / "m.onnx"))
    batches = _batches(n)
    plain = [collector.run(b) for b in batches]
    got = list(collector.runs(batches, prefetch=True))
    assert [b for b, _ in got] == batches
    for (_, activations), expected in zip(got, plain):
        assert list(activations) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(activations[name], expected[name])


def test_prefetched_runs_stop_early_and_raise_in_batch_order(tmp_path):
    from trtkld.data import Batch

    collector = OnnxRuntimeCollector(_small_model(tmp_path / "m.onnx"))
    batches = _batches(4)
    runs = collector.runs(batches, prefetch=True)
    next(runs)
    runs.close()  # stops early: the prefetched run is waited for, nothing hangs
    broken = batches[:2] + [Batch(inputs={"x": np.zeros((2, 3), np.float32)}, sources=("bad",))]
    seen = []
    with pytest.raises(ModelError, match="bad"):
        for batch, _ in collector.runs(broken, prefetch=True):
            seen.append(batch.sources[0])
    assert seen == ["s0", "s1"]


def test_kernels_load_only_when_used():
    # float64 kernels are not loaded by float32 work (numba cache loading costs time)
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from trtkld.histogram import abs_histogram, kernels\n"
        "abs_histogram(np.ones(10, np.float32), 16, 1.0)\n"
        "print(kernels.hist_minmax_32._dispatcher is not None,"
        " kernels.hist_minmax_64._dispatcher is None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True"]
