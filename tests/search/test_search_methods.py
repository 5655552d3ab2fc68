"""mse / percentile / max, the SQNR score, guard findings, auto, the registry and its errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers.reference_searches import (
    bin_abs,
    random_histograms,
    ref_mse,
    ref_percentile_index,
    ref_sqnr_db,
)
from trtkld.errors import SearchError, TrtkldError
from trtkld.search import (
    DEFAULT_BINS,
    SearchResult,
    available_methods,
    get_method,
    guard_findings,
    histogram_sqnr_db,
    run_search,
)
from trtkld.search.auto import AUTO_ORDER, pick_best, rebin_pairs

METHODS = ["ppq", "nvidia", "modelopt", "max", "percentile", "mse", "auto"]


def _check_mse(counts: np.ndarray, r: float) -> bool:
    """Assert fast == exact reference; True when the picks differ at a float-level tie."""
    ref_i, ref_err, _ = ref_mse(counts)                 # exact integers, units (w/254)^2
    res = run_search("mse", counts, hist_max=r)
    w = r / counts.size
    fast = res.divergences * counts.sum() / (w * w) * 254**2
    np.testing.assert_allclose(fast, np.asarray(ref_err, dtype=np.float64), rtol=1e-9)
    if res.index != ref_i:                              # only at a float-level tie
        best = ref_err[ref_i - 1]
        assert abs(ref_err[res.index - 1] - best) <= 1e-12 * best, (res.index, ref_i)
    amax = r if res.index == counts.size else res.index * w
    assert res.amax == amax and res.scale == np.float32(amax / 127)
    return res.index != ref_i


def test_mse_random_histograms():
    ties = [_check_mse(c, r) for _, c, r in random_histograms(500, 256, seed=31)]
    assert len(ties) == 500 and not any(ties)       # no near tie in this seeded set
    for _, counts, r in random_histograms(3, 1000, seed=32):
        _check_mse(counts, r)


@pytest.mark.parametrize("pos", [0, 1, 77, -1])
def test_mse_single_bin_and_small(pos):
    counts = np.zeros(200, dtype=np.int64)
    counts[pos] = 11
    _check_mse(counts, 1.5)
    _check_mse(np.array([3, 0, 1], dtype=np.int64), 0.3)
    _check_mse(np.array([4], dtype=np.int64), 2.0)


def test_mse_exact_tie_takes_smaller_threshold():
    # One spike at the centre of bin 0: amax = w, 2w, 3w all leave an error of w/254.
    res = run_search("mse", np.array([5, 0, 0, 0]), bin_width=1.0)
    assert res.index == 1 and res.amax == 1.0
    assert res.divergences[0] == res.divergences[1] == res.divergences[2]


@pytest.mark.parametrize("pct", [50.0, 99.0, 99.99, 100.0])
def test_percentile_matches_reference(pct):
    for _, counts, r in random_histograms(60, 2048, seed=41):
        res = run_search("percentile", counts, hist_max=r, percentile=pct)
        k1 = ref_percentile_index(counts, pct)
        assert res.index == k1
        assert res.amax == (r if k1 == counts.size else k1 * r / counts.size)
        below = counts[:k1].sum() / counts.sum()
        assert below >= pct / 100 - 1e-12
        assert res.clipped_fraction == pytest.approx(1 - below, abs=1e-12)


def test_percentile_default_and_bad_value():
    counts = np.zeros(2048, dtype=np.int64)
    counts[:1000] = 10
    counts[1999] = 1                                   # 1 of 10001 values: above 99.99%
    res = run_search("percentile", counts, hist_max=2048.0)
    assert res.index == 1000 and res.amax == 1000.0
    for bad in (0.0, -1.0, 100.5, math.nan):
        with pytest.raises(SearchError, match="percentile must be in"):
            run_search("percentile", counts, hist_max=1.0, percentile=bad)


def test_max_is_hist_max():
    counts = np.arange(2048, dtype=np.int64)
    res = run_search("max", counts, hist_max=3.7)
    assert res.amax == 3.7 and res.scale == np.float32(3.7 / 127) and res.clipped_fraction == 0


def test_sqnr_matches_reference():
    rng = np.random.default_rng(51)
    for _, counts, r in random_histograms(40, 1024, seed=52):
        w = r / counts.size
        amax = rng.uniform(0.05, 1.0) * r
        for scale in (amax / 127, amax / 128, amax / 100):
            got = histogram_sqnr_db(counts, w, amax, scale)
            assert got == pytest.approx(ref_sqnr_db(counts, w, amax, scale), rel=1e-10)


def test_sqnr_values():
    # One bin centred at 0.5 with scale 0.5: level 1 exactly, no error -> +inf.
    assert histogram_sqnr_db(np.array([3]), 1.0, 1.0, 0.5) == math.inf
    assert histogram_sqnr_db(np.zeros(8, dtype=np.int64), 1.0, 1.0, 0.1) == math.inf
    # Centre 0.5, scale 0.4 -> level 1 (0.4): error 0.1 -> 10 log10(0.25 / 0.01).
    assert histogram_sqnr_db(np.array([2]), 1.0, 1.0, 0.4) == pytest.approx(
        10 * math.log10(0.25 / 0.01), rel=1e-12)
    with pytest.raises(SearchError, match="scale"):
        histogram_sqnr_db(np.array([2]), 1.0, 1.0, 0.0)
    # mse's objective is exactly this score's noise, over the bin edges: no edge threshold
    # (max, any percentile) can score higher.
    counts, r = bin_abs(np.random.default_rng(0).laplace(size=50_000), 2048)
    w = r / 2048
    mse = run_search("mse", counts, hist_max=r)
    best = histogram_sqnr_db(counts, w, mse.amax, float(mse.scale))
    for i in range(1, 2049, 7):
        amax = i * w
        assert histogram_sqnr_db(counts, w, amax, amax / 127) <= best + 1e-9


def test_guard_findings():
    counts, r = bin_abs(np.random.default_rng(1).normal(size=20_000), 2048)
    w = r / 2048
    assert guard_findings(counts, w, run_search("max", counts, hist_max=r)) == []
    half = run_search("percentile", counts, hist_max=r, percentile=50.0)
    kinds = [f.kind for f in guard_findings(counts, w, half, name="act0")]
    assert kinds == ["clipped", "sqnr_drop"]
    finding = guard_findings(counts, w, half, name="act0")[0]
    assert 0.49 < finding.value < 0.51 and finding.limit == 0.01 and "act0" in finding.message
    assert guard_findings(counts, w, half, max_clipped_fraction=0.6,
                          max_sqnr_drop_db=100.0) == []
    zero = run_search("nvidia", np.zeros(2048, dtype=np.int64), hist_max=0.0)
    assert [f.kind for f in guard_findings(np.zeros(2048, dtype=np.int64), 0.0, zero)] == [
        "fallback"]
    # A constant tensor: nvidia's all-infinite rule (m = 128) clips everything.
    const = np.zeros(2048, dtype=np.int64)
    const[-1] = 100
    res = run_search("nvidia", const, hist_max=1.0)
    kinds = {f.kind for f in guard_findings(const, 1.0 / 2048, res)}
    assert kinds == {"clipped", "sqnr_drop"}


def test_rebin_pairs_equals_collecting_at_half():
    x = np.random.default_rng(2).standard_t(2.5, size=100_000)
    h4096, r = bin_abs(x, 4096)
    h2048, _ = bin_abs(x, 2048)
    assert np.array_equal(rebin_pairs(h4096), h2048)


def test_auto_picks_best_sqnr():
    for _, counts, r in random_histograms(25, 4096, seed=61):
        res = run_search("auto", counts, hist_max=r)
        w = r / 4096
        assert res.method == "auto" and set(res.scores) == set(AUTO_ORDER)
        half = counts.reshape(-1, 2).sum(axis=1)
        for method in AUTO_ORDER:
            sub = run_search(method, counts if method == "ppq" else half, hist_max=r)
            assert res.scores[method] == histogram_sqnr_db(counts, w, sub.amax,
                                                           float(sub.scale))
        best = max(res.scores.values())
        first = next(m for m in AUTO_ORDER if res.scores[m] == best)
        assert res.chosen_method == first
        win = run_search(first, counts if first == "ppq" else half, hist_max=r)
        assert res.amax == win.amax and res.scale == win.scale and res.index == win.index


def test_auto_tie_goes_to_earlier_method_and_odd_bins():
    assert pick_best({"mse": 3.0, "max": 3.0, "ppq": 1.0}) == "max"
    assert pick_best({"modelopt": math.inf, "nvidia": math.inf}) == "nvidia"
    assert pick_best({"mse": 2.0, "percentile": 1.0}) == "mse"
    # Every value in the last bin: max and percentile (upper edge of that bin) coincide.
    counts = np.zeros(4096, dtype=np.int64)
    counts[-1] = 10
    res = run_search("auto", counts, hist_max=1.0)
    assert res.scores["max"] == res.scores["percentile"]
    assert res.chosen_method != "percentile"
    # 300 bins: ppq cannot compete (not a multiple of 128), the rest run on 150 bins.
    odd = np.arange(300, dtype=np.int64)
    res = run_search("auto", odd, hist_max=1.0)
    assert "ppq" not in res.scores and res.chosen_method in res.scores


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_fallback(method):
    for hist_max in (0.0, 5.0):
        res = run_search(method, np.zeros(4096, dtype=np.int64), hist_max=hist_max)
        assert res.fallback == "all-zero histogram" and res.amax == 1.0
        assert res.scale == np.float32(1 / 128 if method == "ppq" else 1 / 127)


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_tensors_give_finite_positive_scales(method):
    cases = [np.array([0.5, -0.5, 0.25]), np.array([1e-30, -3e-31]), np.array([7.0]),
             np.array([0.0, 0.0, 1e-40]), np.array([3e38, -1.0])]
    for x in cases:
        counts, r = bin_abs(x, DEFAULT_BINS[method])
        res = run_search(method, counts, hist_max=r)
        assert isinstance(res.scale, np.float32)
        assert np.isfinite(res.scale) and res.scale > 0, (method, x, res)
        assert math.isfinite(res.amax) and res.amax > 0
        assert not (res.divergences is not None and np.isnan(res.divergences).any())


def test_deterministic():
    counts, r = bin_abs(np.random.default_rng(3).laplace(size=10_000), 4096)
    for method in METHODS:
        a = run_search(method, counts, hist_max=r)
        b = run_search(method, counts.copy(), hist_max=r)
        assert a.index == b.index and a.scale.tobytes() == b.scale.tobytes()


def test_registry():
    assert available_methods() == METHODS
    assert set(DEFAULT_BINS) == set(METHODS)
    counts = np.arange(2048, dtype=np.int64)
    res = run_search("nvidia", counts, bin_width=0.01)
    assert isinstance(res, SearchResult) and res.method == "nvidia"
    assert res.index == run_search("nvidia", counts, hist_max=20.48).index


@pytest.mark.parametrize("call, match", [
    (lambda: run_search("kl", np.ones(8), hist_max=1.0), "unknown search method 'kl'"),
    (lambda: get_method("kl"), "unknown search method"),
    (lambda: run_search("nvidia", np.ones(8), hist_max=1.0, percentile=9.0),
     "does not take option"),
    (lambda: run_search("max", np.ones((2, 4)), hist_max=1.0), r"shape \(2, 4\)"),
    (lambda: run_search("max", np.array([1, -2]), hist_max=1.0), ">= 0, found -2"),
    (lambda: run_search("max", np.array([1.5]), hist_max=1.0), "whole numbers"),
    (lambda: run_search("max", np.array([np.nan]), hist_max=1.0), "finite"),
    (lambda: run_search("max", np.array(["a"]), hist_max=1.0), "dtype"),
    (lambda: run_search("max", np.ones(8)), "bin_width or hist_max"),
    (lambda: run_search("max", np.ones(8), hist_max=math.inf), "hist_max must be finite"),
    (lambda: run_search("max", np.ones(8), bin_width=1.0, hist_max=2.0), "disagrees"),
    (lambda: run_search("max", np.ones(8), hist_max=-1.0, name="x"), "tensor 'x'"),
])
def test_errors(call, match):
    with pytest.raises(SearchError, match=match) as info:
        call()
    assert isinstance(info.value, TrtkldError)


def test_float_histograms_accepted():
    counts = np.arange(256, dtype=np.float32)
    a = run_search("nvidia", counts, hist_max=1.0)
    b = run_search("nvidia", counts.astype(np.int64), hist_max=1.0)
    assert a.index == b.index and a.scale == b.scale
