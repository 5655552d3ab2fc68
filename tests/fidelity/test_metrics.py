"""trtkld.fidelity metrics: SQNR, fake quantization, streaming output/tensor accumulators."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trtkld.fidelity import (
    OutputAccumulator,
    TensorAccumulator,
    fake_quantize,
    per_sample_cosine,
    sqnr_db,
)


def test_sqnr_edge_cases():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert math.isnan(sqnr_db(0.0, 0.0))


def test_fake_quantize_rounds_half_even_and_saturates_like_quantizelinear():
    s = np.float32(0.5)
    x = np.array([0.25, 0.75, -0.25, 63.5, 63.75, -64.0, -64.25, -100.0, 1e9], np.float32)
    # x / s = 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, 127, 127.5 -> 128 -> 127, -128, -128.5 -> -128...
    expect = np.array([0, 2, 0, 127, 127, -128, -128, -128, 127], np.float32) * s
    np.testing.assert_array_equal(fake_quantize(x, s), expect)


def test_output_accumulator_streams_exactly():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 5)).astype(np.float32)
    test = ref + rng.standard_normal((6, 5)).astype(np.float32) * 0.1
    test[2] = ref[2][::-1]  # a different top-1
    acc = OutputAccumulator("y")
    acc.update(ref[:4], test[:4])
    acc.update(ref[4:], test[4:])
    r64, t64 = ref.astype(np.float64), test.astype(np.float64)
    expect_sqnr = 10 * np.log10((r64 ** 2).sum() / ((r64 - t64) ** 2).sum())
    assert acc.sqnr_db == pytest.approx(expect_sqnr, rel=1e-12)
    cos = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(r64, t64)]
    assert acc.cosine == pytest.approx(np.mean(cos), rel=1e-12)
    same = (ref.argmax(1) == test.argmax(1)).mean()
    assert acc.top1_agreement == pytest.approx(same) and same < 1.0
    nonclass = OutputAccumulator("boxes")
    nonclass.update(ref[:, :1], test[:, :1])
    assert nonclass.top1_agreement is None


def test_nonfinite_int8_output_counts_as_collapse():
    acc = OutputAccumulator("y")
    ref = np.ones((2, 3), np.float32)
    bad = ref.copy()
    bad[0, 0] = np.nan
    acc.update(ref, bad)
    assert acc.sqnr_db == -math.inf and acc.nonfinite == 1


def test_cosine_of_zero_samples():
    z = np.zeros((2, 3))
    assert per_sample_cosine(z, z).tolist() == [1.0, 1.0]
    assert per_sample_cosine(z, np.ones((2, 3))).tolist() == [0.0, 0.0]


def test_tensor_accumulator_matches_plain_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 100)).astype(np.float32) * 4
    s = np.float32(0.02)   # amax 2.54: clips the tails
    acc = TensorAccumulator({"t": s})
    acc.update("t", x[:1])
    acc.update("t", x[1:])
    acc.update("unquantized", x)  # ignored: no scale
    q = np.clip(np.rint(x / s), -128, 127) * s
    x64 = x.astype(np.float64)
    expect = 10 * np.log10((x64 ** 2).sum() / ((x64 - q) ** 2).sum())
    assert acc.sqnr()["t"] == pytest.approx(expect, rel=1e-9)
    assert acc.clipped_fraction()["t"] == pytest.approx(np.mean(np.abs(x) > np.float32(127 * s)))
    assert set(acc.sqnr()) == {"t"}
