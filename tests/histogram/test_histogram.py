"""Tests of trtkld.histogram against plain-numpy references written from the binning rule."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trtkld.errors import HistogramError, TrtkldError
from trtkld.histogram import (
    AbsmaxTracker,
    HistogramSet,
    TensorHistogram,
    TensorStats,
    _pool,
    abs_histogram,
    tensor_stats,
)

# Sizes around the kernel's block (1024) and sub-histogram (16384) boundaries.
SIZES = [0, 1, 3, 1023, 1024, 1025, 16383, 16384, 16385, 70001]


# --------------------------------------------------------------------------- references
def ref_hist(x: np.ndarray, num_bins: int, hist_max: float) -> np.ndarray:
    """The architecture's binning rule, written plainly in numpy float64."""
    a = np.abs(np.asarray(x).astype(np.float64).ravel())
    a = a[np.isfinite(a)]
    if hist_max == 0:
        return np.zeros(num_bins, np.int64)
    with np.errstate(over="ignore"):  # huge |x| * B/R -> inf -> clamped to the last bin
        idx = np.floor(a * (np.float64(num_bins) / np.float64(hist_max)))
    idx = np.minimum(idx, num_bins - 1).astype(np.int64)
    return np.bincount(idx, minlength=num_bins).astype(np.int64)


def ref_stats(x: np.ndarray) -> TensorStats:
    v = np.asarray(x).astype(np.float64).ravel()
    fin = v[np.isfinite(v)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
    return TensorStats(
        min=lo,
        max=hi,
        absmax=max(abs(lo), abs(hi)),
        num_finite=int(fin.size),
        num_nan=int(np.isnan(v).sum()),
        num_posinf=int((v == np.inf).sum()),
        num_neginf=int((v == -np.inf).sum()),
    )


def same_stats(a: TensorStats, b: TensorStats) -> bool:
    # -0.0 == 0.0 is fine for min/max; everything else exact
    return a == b


def edge_data(
    rng: np.random.Generator, n: int, hist_max: float, num_bins: int, dtype
) -> np.ndarray:
    """Random activations mixed with the hard cases: values at/next to bin edges and at R,
    zeros of both signs, subnormals, NaN and +-Inf."""
    w = np.float64(hist_max) / num_bins
    k = rng.integers(0, num_bins + 1, size=n)
    edges = (k * w).astype(dtype)
    parts = [
        (rng.standard_normal(n) * hist_max / 3).astype(dtype),
        edges,
        np.nextafter(edges, dtype(np.inf)),
        np.nextafter(edges, dtype(0)),
        np.full(4, hist_max, dtype),
        -np.full(4, hist_max, dtype),
        np.array([0.0, -0.0, np.finfo(dtype).smallest_subnormal, -np.finfo(dtype).tiny], dtype),
        np.array([np.nan, np.inf, -np.inf, np.nan], dtype),
    ]
    x = np.concatenate(parts)
    x = np.where(rng.random(x.size) < 0.5, x, -x).astype(dtype)
    return x[rng.permutation(x.size)]


# --------------------------------------------------------------------------- kernel exactness
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("num_bins", [1, 3, 2048, 4096])
def test_kernel_matches_reference_rule_with_edges(dtype, num_bins):
    rng = np.random.default_rng(num_bins)
    hist_max = float(np.float32(2.75)) if dtype != np.float16 else 2.75
    x = edge_data(rng, 6000, hist_max, num_bins, dtype)
    got = abs_histogram(x, num_bins, hist_max)
    assert got.dtype == np.int64 and got.shape == (num_bins,)
    np.testing.assert_array_equal(got, ref_hist(x, num_bins, hist_max))
    # exact values at R land in the last bin, NaN/Inf are not binned
    assert got.sum() == np.isfinite(x).sum()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_sizes_around_block_boundaries(n, dtype):
    rng = np.random.default_rng(n)
    x = np.maximum(rng.standard_normal(n), 0).astype(dtype)  # ReLU-like: many exact zeros
    if n > 5:
        x[::7] = np.nan
        x[3::11] = -np.inf
    r = float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0)) or 1.0
    np.testing.assert_array_equal(abs_histogram(x, 2048, r), ref_hist(x, 2048, r))
    assert tensor_stats(x) == ref_stats(x)


def test_values_above_hist_max_clamp_into_last_bin():
    x = np.array([0.5, 1.0, 2.0, 1e30, -7.0, np.inf], np.float32)
    got = abs_histogram(x, 4, 1.0)
    np.testing.assert_array_equal(got, [0, 0, 1, 4])


def test_non_contiguous_and_multidimensional_inputs():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((64, 48, 3)).astype(np.float32)
    views = (base[:, ::2], base.transpose(2, 0, 1), base[::-1, :, 1], base.astype(np.float64).T)
    for view in views:
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(abs_histogram(view, 512, 4.5), ref_hist(view, 512, 4.5))
        assert tensor_stats(view) == ref_stats(view)


def test_float16_matches_reference_on_every_finite_half():
    every = np.arange(2**16, dtype=np.uint16).view(np.float16)  # all bit patterns incl. NaN/Inf
    got = abs_histogram(every, 4096, 65504.0)
    np.testing.assert_array_equal(got, ref_hist(every, 4096, 65504.0))
    assert tensor_stats(every) == ref_stats(every)
    s = tensor_stats(every)
    assert (s.num_posinf, s.num_neginf, s.num_nan) == (1, 1, 2046)


def test_agrees_with_np_histogram_where_unambiguous():
    # np.histogram computes bins as (x - lo) * (B / (hi - lo)) and then corrects with the edge
    # array; at exact edges the two can differ by one bin, so compare on values well inside bins.
    rng = np.random.default_rng(5)
    num_bins, hist_max = 2048, 3.0
    a = np.abs(rng.standard_normal(200_000)) * 1.2
    a = np.minimum(a, hist_max)
    pos = a * num_bins / hist_max
    inside = np.abs(pos - np.round(pos)) > 1e-6
    a = a[inside]
    expected, _ = np.histogram(a, bins=num_bins, range=(0.0, hist_max))
    np.testing.assert_array_equal(abs_histogram(-a, num_bins, hist_max), expected)
    np.testing.assert_array_equal(abs_histogram(a.astype(np.float32), num_bins, hist_max),
                                  ref_hist(a.astype(np.float32), num_bins, hist_max))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(max_dims=2, max_side=40),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True},
    ),
    st.sampled_from([1, 2, 5, 64, 4096]),
    st.floats(min_value=1e-30, max_value=1e30),
)
def test_kernel_matches_reference_hypothesis(x, num_bins, hist_max):
    np.testing.assert_array_equal(
        abs_histogram(x, num_bins, hist_max), ref_hist(x, num_bins, hist_max)
    )
    assert tensor_stats(x) == ref_stats(x)


# --------------------------------------------------------------------------- rebin
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("hist_max", [1.0, 3.0, 0.1, 7.123456789, 1e-3])
def test_rebin_equals_direct_histogram_exactly(dtype, hist_max):
    rng = np.random.default_rng(int(hist_max * 1000))
    r = float(dtype(hist_max))
    x = edge_data(rng, 20000, r, 4096, dtype)
    # also edges of the 2048 and 512 grids
    x = np.concatenate(
        [x, edge_data(rng, 3000, r, 2048, dtype), edge_data(rng, 3000, r, 512, dtype)]
    )
    h = TensorHistogram("t", 4096, r)
    h.update(x)
    for b in (2048, 1024, 512, 128, 1):
        direct = TensorHistogram("t", b, r)
        direct.update(x)
        rebinned = h.rebin(b)
        np.testing.assert_array_equal(rebinned.counts, direct.counts)
        assert rebinned == direct


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(dtype=np.float32, shape=st.integers(1, 300),
               elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)),
    st.floats(min_value=1e-6, max_value=1e6),
)
def test_rebin_property(x, hist_max):
    h = TensorHistogram("t", 4096, hist_max)
    h.update(x)
    np.testing.assert_array_equal(h.rebin(2048).counts, abs_histogram(x, 2048, hist_max))
    np.testing.assert_array_equal(h.rebin(64).counts, abs_histogram(x, 64, hist_max))


def test_rebin_rejects_non_power_of_two_factors():
    h = TensorHistogram("layer/conv:0", 4096, 1.0)
    for bad in (3000, 4096 * 2, 1365, 0):
        with pytest.raises(HistogramError, match="layer/conv:0"):
            h.rebin(bad)
    with pytest.raises(HistogramError, match="power-of-two"):
        TensorHistogram("t", 12, 1.0).rebin(4)  # factor 3
    assert TensorHistogram("t", 12, 1.0).rebin(6).num_bins == 6


# --------------------------------------------------------------------------- TensorHistogram
def test_batches_equal_one_update_on_concatenation():
    rng = np.random.default_rng(7)
    batches = [edge_data(rng, n, 4.0, 4096, np.float32) for n in (10, 5000, 1, 20000)]
    r = 4.0
    a = TensorHistogram("x", 4096, r)
    for b in batches:
        a.update(b)
    whole = TensorHistogram("x", 4096, r)
    whole.update(np.concatenate(batches))
    assert a == whole
    np.testing.assert_array_equal(a.counts, ref_hist(np.concatenate(batches), 4096, r))
    assert a.stats == ref_stats(np.concatenate(batches))


def test_merge_of_halves_equals_whole():
    rng = np.random.default_rng(8)
    x = edge_data(rng, 30000, 2.0, 2048, np.float32)
    whole = TensorHistogram("blk.3/relu", 2048, 2.0)
    whole.update(x)
    a = TensorHistogram("blk.3/relu", 2048, 2.0)
    b = TensorHistogram("blk.3/relu", 2048, 2.0)
    a.update(x[:12345])
    b.update(x[12345:])
    assert a.merge(b) == whole
    assert b.merge(a) == whole
    assert whole.num_nan == int(np.isnan(x).sum()) and whole.num_nan > 0


def test_merge_mismatch_errors_name_tensor_and_difference():
    a = TensorHistogram("conv1 out:0", 2048, 2.0)
    with pytest.raises(HistogramError, match="'conv1 out:0'.*'other'"):
        a.merge(TensorHistogram("other", 2048, 2.0))
    with pytest.raises(HistogramError, match=r"conv1 out:0.*2048 and 4096 bins"):
        a.merge(TensorHistogram("conv1 out:0", 4096, 2.0))
    with pytest.raises(HistogramError, match=r"conv1 out:0.*hist_max 2.0 and 2.5"):
        a.merge(TensorHistogram("conv1 out:0", 2048, 2.5))


def test_all_zero_and_no_finite_tensors():
    # all zeros: pass 1 absmax 0 -> hist_max 0; counts stay zero, bin 0 NOT filled
    z = np.zeros((4, 5), np.float32)
    tr = AbsmaxTracker()
    tr.update("zero", z)
    tr.update("nan", np.full(7, np.nan, np.float16))
    tr.update("inf", np.array([np.inf, -np.inf, np.nan]))
    assert tr.absmax() == {"zero": 0.0, "nan": 0.0, "inf": 0.0}
    hs = tr.histograms(4096)
    hs.update("zero", z)
    hs.update("nan", np.full(7, np.nan, np.float16))
    hs.update("inf", np.array([np.inf, -np.inf, np.nan]))
    assert hs["zero"].hist_max == 0.0 and not hs["zero"].counts.any()
    assert hs["zero"].num_values == 20 and hs["zero"].bin_width == 0.0
    assert hs["nan"].num_nan == 7 and hs["nan"].num_values == 0 and not hs["nan"].counts.any()
    assert (hs["inf"].num_posinf, hs["inf"].num_neginf, hs["inf"].num_nan) == (1, 1, 1)
    np.testing.assert_array_equal(abs_histogram(z, 16, 0.0), np.zeros(16, np.int64))


def test_nonzero_data_against_zero_hist_max_is_an_error():
    h = TensorHistogram("act/7", 128, 0.0)
    with pytest.raises(HistogramError, match="act/7.*hist_max is 0"):
        h.update(np.array([0.0, 1e-3], np.float32))
    assert not h.counts.any() and h.num_values == 0  # unchanged


@pytest.mark.parametrize("hist_max", [-1.0, float("nan"), float("inf"), "abc"])
def test_bad_hist_max(hist_max):
    with pytest.raises(HistogramError, match="'t'.*hist_max"):
        TensorHistogram("t", 16, hist_max)


def test_hist_max_too_small_for_bins():
    with pytest.raises(HistogramError, match="too small"):
        TensorHistogram("t", 4096, 5e-324)


@pytest.mark.parametrize("num_bins", [0, -4, 2.5, True, None])
def test_bad_num_bins(num_bins):
    with pytest.raises(HistogramError):
        TensorHistogram("t", num_bins, 1.0)
    with pytest.raises(HistogramError):
        abs_histogram(np.ones(3, np.float32), num_bins, 1.0)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool, np.complex64, object])
def test_non_float_inputs_are_rejected_with_tensor_name(dtype):
    h = TensorHistogram("input_ids", 16, 1.0)
    with pytest.raises(HistogramError, match=r"'input_ids'.*float16/float32/float64.*found"):
        h.update(np.ones(3, dtype))
    with pytest.raises(TrtkldError, match="input_ids"):
        tensor_stats(np.ones(3, dtype), name="input_ids")


def test_constructor_from_counts_validates():
    h = TensorHistogram("t", hist_max=2.0, counts=np.array([1, 2, 3, 4], np.int32))
    assert h.counts.dtype == np.int64 and h.bin_width == 0.5
    with pytest.raises(HistogramError, match=">= 0"):
        TensorHistogram("t", hist_max=2.0, counts=np.array([1, -2]))
    with pytest.raises(HistogramError, match="hist_max is 0"):
        TensorHistogram("t", hist_max=0.0, counts=np.array([1, 0]))
    with pytest.raises(HistogramError, match="1-D"):
        TensorHistogram("t", hist_max=1.0, counts=np.ones((2, 2), np.int64))


def test_stats_min_max_absmax_signs():
    s = tensor_stats(np.array([-3.5, 2.0, np.nan, -np.inf, 1e300], np.float64))
    assert (s.min, s.max, s.absmax) == (-3.5, 1e300, 1e300)
    s = tensor_stats(np.array([-0.25, -8.0], np.float32))
    assert (s.min, s.max, s.absmax) == (-8.0, -0.25, 8.0)
    assert tensor_stats(np.zeros(0, np.float32)) == TensorStats()
    # merge with an empty side keeps the other side's min/max
    assert TensorStats().merge(s) == s and s.merge(TensorStats()) == s


# --------------------------------------------------------------------------- HistogramSet
NAMES = ["input", "conv1/Conv_output_0", "layer 2:0", "a/b/c::weird name", "zeros", "énorme"]


def make_arrays(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "input": (rng.random((2, 3, 32, 32)) * scale).astype(np.float32),
        "conv1/Conv_output_0": (rng.standard_normal((2, 16, 30, 30)) * scale).astype(np.float32),
        "layer 2:0": np.maximum(rng.standard_normal((2, 8, 15, 15)), 0).astype(np.float16),
        "a/b/c::weird name": rng.standard_normal((5, 7)).T,  # float64, non-contiguous
        "zeros": np.zeros((2, 4), np.float32),
        "énorme": np.where(rng.random(3000) < 0.01, np.nan, rng.standard_normal(3000)),
    }


def build_set(batches, num_bins=4096) -> HistogramSet:
    tr = AbsmaxTracker(NAMES)
    for b in batches:
        tr.update_many(b)
    hs = tr.histograms(num_bins)
    for b in batches:
        hs.update_many(b)
    return hs


def test_two_pass_set_matches_per_tensor_reference():
    rng = np.random.default_rng(11)
    batches = [make_arrays(rng), make_arrays(rng, 3.0), make_arrays(rng, 0.5)]
    hs = build_set(batches)
    assert list(hs) == NAMES
    for name in NAMES:
        data = np.concatenate([np.asarray(b[name], np.float64).ravel() for b in batches])
        ref = ref_stats(data)
        h = hs[name]
        assert h.hist_max == ref.absmax
        assert h.stats == ref
        np.testing.assert_array_equal(h.counts, ref_hist(data, 4096, ref.absmax))
        if ref.absmax > 0:
            assert h.counts.sum() == ref.num_finite and h.counts[-1] >= 1  # the absmax value


def test_update_many_parallel_and_split_equal_sequential(monkeypatch):
    # Force the thread pool and the splitting of large tensors on small data.
    monkeypatch.setattr(_pool, "SPLIT_MIN_ELEMENTS", 1000)
    monkeypatch.setattr(_pool, "PARALLEL_MIN_ELEMENTS", 1)
    rng = np.random.default_rng(12)
    batches = [make_arrays(rng), make_arrays(rng, 2.0)]
    par = build_set(batches)
    seq_tr = AbsmaxTracker(NAMES)
    for b in batches:
        for name, x in b.items():
            seq_tr.update(name, x)
    seq = seq_tr.histograms(4096)
    for b in batches:
        for name, x in reversed(list(b.items())):
            seq.update(name, x)
    assert par == seq
    for _ in range(3):  # repeatable regardless of scheduling
        assert build_set(batches) == par


def test_update_many_unknown_tensor_is_error_and_atomic():
    hs = HistogramSet([TensorHistogram("a", 8, 1.0)])
    with pytest.raises(HistogramError, match="'nope'"):
        hs.update_many({"a": np.ones(3, np.float32), "nope": np.ones(3, np.float32)})
    with pytest.raises(HistogramError, match="'a'"):
        hs.update_many({"a": np.ones(3, np.int64)})
    assert hs["a"].num_values == 0


def test_set_merge_equals_whole_and_rejects_mismatch():
    rng = np.random.default_rng(13)
    batches = [make_arrays(rng), make_arrays(rng, 2.0), make_arrays(rng, 0.1)]
    whole = build_set(batches)
    absmax = {n: whole[n].hist_max for n in NAMES}
    parts = []
    for chunk in (batches[:1], batches[1:]):
        hs = HistogramSet.from_absmax(absmax, 4096)
        for b in chunk:
            hs.update_many(b)
        parts.append(hs)
    assert parts[0].merge(parts[1]) == whole
    other = HistogramSet.from_absmax({**absmax, "extra": 1.0}, 4096)
    with pytest.raises(HistogramError, match="extra"):
        whole.merge(other)
    shifted = HistogramSet.from_absmax({n: v * 2 + 1 for n, v in absmax.items()}, 4096)
    with pytest.raises(HistogramError, match="'input'.*hist_max"):
        whole.merge(shifted)


def test_set_rebin_and_duplicates():
    rng = np.random.default_rng(14)
    whole = build_set([make_arrays(rng)], 4096)
    direct = build_set([make_arrays(np.random.default_rng(14))], 2048)
    assert whole.rebin(2048) == direct
    with pytest.raises(HistogramError, match="already"):
        HistogramSet([TensorHistogram("x", 4, 1.0), TensorHistogram("x", 4, 1.0)])


# --------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(15)
    hs = build_set([make_arrays(rng), make_arrays(rng, 4.0)])
    hs.add(TensorHistogram("different bins", hist_max=2.0, counts=np.arange(16)))
    path = tmp_path / "hists"  # no suffix: written exactly there
    hs.save(path)
    assert sorted(os.listdir(tmp_path)) == ["hists"]  # no temp file left behind
    back = HistogramSet.load(path)
    assert back == hs and list(back) == list(hs)
    assert back["zeros"].hist_max == 0.0 and back["énorme"].num_nan == hs["énorme"].num_nan
    hs.save(str(path))  # overwrite in place
    assert HistogramSet.load(str(path)) == hs
    empty = tmp_path / "empty.npz"
    HistogramSet().save(empty)
    assert len(HistogramSet.load(empty)) == 0


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _valid_arrays():
    return dict(
        format=np.array("trtkld-histograms"), version=np.array(1), names=np.array(["t"]),
        num_bins=np.array([4]), counts=np.array([1, 0, 0, 2]), hist_max=np.array([1.0]),
        min=np.array([-1.0]), max=np.array([0.5]), num_values=np.array([3]),
        num_nan=np.array([0]), num_posinf=np.array([0]), num_neginf=np.array([0]),
    )


def test_load_valid_handwritten_file(tmp_path):
    p = tmp_path / "ok.npz"
    _write_npz(p, **_valid_arrays())
    h = HistogramSet.load(p)["t"]
    np.testing.assert_array_equal(h.counts, [1, 0, 0, 2])
    assert (h.min, h.max, h.absmax, h.num_values) == (-1.0, 0.5, 1.0, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": np.array("something-else")}, "expected format"),
        ({"version": np.array(2)}, "expected version 1"),
        ({"counts": np.array([1, 0, 0])}, "counts has 3 values"),
        ({"counts": np.array([1, 0, -1, 2])}, ">= 0"),
        ({"hist_max": np.array([np.nan])}, "hist_max"),
        ({"names": np.array([1])}, "'names'"),
        ({"num_nan": np.array([1, 2])}, "'num_nan'"),
        ({"hist_max": np.array([0.0])}, "hist_max is 0"),
        ({"min": np.array([2.0])}, "min/max"),
    ],
)
def test_load_rejects_invalid_files(tmp_path, change, message):
    p = tmp_path / "bad.npz"
    _write_npz(p, **{**_valid_arrays(), **change})
    with pytest.raises(HistogramError, match=message) as exc:
        HistogramSet.load(p)
    assert str(p) in str(exc.value)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(HistogramError, match="missing.npz.*not found"):
        HistogramSet.load(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(HistogramError, match="garbage.npz"):
        HistogramSet.load(garbage)
    npy = tmp_path / "plain.npy"
    np.save(npy, np.arange(3))
    with pytest.raises(HistogramError, match="plain.npy.*npz"):
        HistogramSet.load(npy)
    nokeys = tmp_path / "nokeys.npz"
    arrays = _valid_arrays()
    del arrays["counts"]
    _write_npz(nokeys, **arrays)
    with pytest.raises(HistogramError, match="nokeys.npz.*missing.*counts"):
        HistogramSet.load(nokeys)
    pickled = tmp_path / "pickled.npz"
    _write_npz(pickled, **{**_valid_arrays(), "names": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(HistogramError, match="pickled.npz"):
        HistogramSet.load(pickled)


def test_save_to_missing_directory_is_clear_error(tmp_path):
    with pytest.raises(HistogramError, match="no_such_dir"):
        HistogramSet().save(tmp_path / "no_such_dir" / "h.npz")


# --------------------------------------------------------------------------- tracker
def test_tracker_merge_and_order():
    rng = np.random.default_rng(16)
    b1, b2 = make_arrays(rng), make_arrays(rng, 5.0)
    t1, t2, both = AbsmaxTracker(NAMES), AbsmaxTracker(NAMES), AbsmaxTracker(NAMES)
    t1.update_many(b1)
    t2.update_many(b2)
    both.update_many(b1)
    both.update_many(b2)
    merged = t1.merge(t2)
    assert list(merged) == NAMES and dict(merged) == dict(both)
    late = AbsmaxTracker()
    late.update_many({"z": np.ones(2, np.float32), "a": -np.ones(3, np.float32)})
    assert list(late) == ["z", "a"] and late["a"].absmax == 1.0


def test_read_only_inputs():
    rng = np.random.default_rng(17)
    for dtype in (np.float16, np.float32, np.float64):
        buf = rng.standard_normal(5000).astype(dtype).tobytes()
        x = np.frombuffer(buf, dtype=dtype)  # read-only, like mmap'd or ORT-owned memory
        assert not x.flags.writeable
        np.testing.assert_array_equal(abs_histogram(x, 256, 4.0), ref_hist(x, 256, 4.0))
        assert tensor_stats(x) == ref_stats(x)
        hs = HistogramSet([TensorHistogram("ro", 256, 4.0)])
        hs.update_many({"ro": x})
        np.testing.assert_array_equal(hs["ro"].counts, ref_hist(x, 256, 4.0))


def test_import_does_not_load_numba():
    # Loading and searching saved histograms must not pay for numba's import / compilation.
    import subprocess
    import sys

    code = "import sys, trtkld.histogram; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_signed_zero_min_max_independent_of_merge_order():
    pos, neg = tensor_stats(np.zeros(3, np.float32)), tensor_stats(-np.zeros(2, np.float32))
    whole = tensor_stats(np.array([0.0, -0.0, 0.0, -0.0, 0.0], np.float32))
    for merged in (pos.merge(neg), neg.merge(pos)):
        assert merged == whole
        assert np.signbit(merged.min) == np.signbit(whole.min) == True  # noqa: E712
        assert np.signbit(merged.max) == np.signbit(whole.max) == False  # noqa: E712


def test_given_ranges_must_cover_every_tensor_and_keep_model_order():
    from trtkld.errors import HistogramError
    from trtkld.histogram import HistogramSet

    hists = HistogramSet.from_given_ranges(["b", "a"], {"a": 2.0, "b": 4.0, "c": 1.0}, 8)
    assert list(hists) == ["b", "a"]
    assert [hists[n].hist_max for n in hists] == [4.0, 2.0]
    with pytest.raises(HistogramError, match=r"lack 1 tensor\(s\).*\['b'\]"):
        HistogramSet.from_given_ranges(["a", "b"], {"a": 2.0}, 8)
