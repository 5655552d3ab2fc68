"""Kernel speed-ups keep exact results: lazy loading per dtype, uint16 sub-histogram flushes."""
from __future__ import annotations


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


def test_counts_exact_across_sub_histogram_flushes():
    # the kernel counts in uint16 sub-histograms flushed every 2**17 elements: one value
    # repeated far past 2**16 (the many zeros of a ReLU), and a mix, must still count exactly
    import numpy as np

    from trtkld.histogram import abs_histogram, kernels

    flush = kernels._FLUSH_EVERY
    for n in (flush - 1, flush, flush + 1, 3 * flush + 1029, (1 << 20) + 7):
        zeros = np.zeros(n, np.float32)
        counts = abs_histogram(zeros, 2048, 1.0)
        assert counts[0] == n and counts.sum() == n
        x = np.where(np.arange(n) % 7 == 0, np.float32(0.99), np.float32(0.0))
        counts = abs_histogram(x.astype(np.float64), 4096, 1.0)
        expected = np.zeros(4096, np.int64)
        expected[0] = n - (n + 6) // 7
        expected[int(0.99 * 4096)] = (n + 6) // 7
        np.testing.assert_array_equal(counts, expected)


def test_parallel_update_raises_the_first_failing_tensor_and_changes_nothing():
    # run_tasks shares one queue between the calling thread and a pool thread; an error must
    # still be the first failing task's in task order, after every task ran, and be atomic
    import numpy as np
    import pytest

    from trtkld.errors import HistogramError
    from trtkld.histogram import HistogramSet, TensorHistogram

    rng = np.random.default_rng(5)
    names = [f"t{i}" for i in range(12)]
    hists = HistogramSet(TensorHistogram(n, 256, 0.0 if n in ("t3", "t7") else 8.0)
                         for n in names)
    arrays = {n: rng.normal(size=40000).astype(np.float32) for n in names}
    before = {n: h.counts.copy() for n, h in hists.items()}
    with pytest.raises(HistogramError, match="'t3'"):
        hists.update_many(arrays)
    for n in names:
        np.testing.assert_array_equal(hists[n].counts, before[n])
    good = {n: x for n, x in arrays.items() if n not in ("t3", "t7")}
    hists.update_many(good)
    for n, x in good.items():
        expected = np.bincount(np.minimum((np.abs(x.astype(np.float64)) * 32.0).astype(int), 255),
                               minlength=256)
        np.testing.assert_array_equal(hists[n].counts, expected)
