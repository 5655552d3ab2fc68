"""Throughput of the |x| histogram hot loop against baselines measured in the same run.

Usage:  /work/venv/bin/python bench/histogram.py [--mb 64] [--bins 4096] [--repeat 5]

Prints GB/s (input bytes / best wall time) for float32 activations, normal and ReLU-like:
  ours 1 thread    abs_histogram (fused |x| histogram + finite min/max + NaN/Inf routing)
  pass-1 stats     tensor_stats (finite min/max + NaN/Inf counts)
  ours 2 threads   HistogramSet.update_many over 8 tensors of the same total size
  np.histogram     np.histogram(np.abs(x), bins, range=(0, R))   (the baseline to beat)
  x.sum()          a plain memory pass: the ceiling set by memory bandwidth
  2T cpu/wall      process CPU time / wall time of the 2-thread run (2.0 = both cores used)
Numba compile time is excluded (every kernel runs once before timing); whether the kernels were
compiled in this run or loaded from numba's cache is printed.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    return _best_cpu(fn, repeat)[0]


def _best_cpu(fn, repeat: int) -> tuple[float, float]:
    """(best wall seconds, process CPU seconds / wall seconds of that run)."""
    fn()  # warm-up (page faults, numba dispatch)
    best, ratio = float("inf"), 0.0
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, ratio = wall, cpu / wall
    return best, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64.0, help="MB of float32 activations")
    ap.add_argument("--bins", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    from trtkld.histogram import (
        HistogramSet,
        TensorHistogram,
        abs_histogram,
        kernels,
        tensor_stats,
    )

    # kernels load lazily: load the ones timed below now, so compile time stays out of figures
    misses = sum(
        sum(k.dispatcher.stats.cache_misses.values())
        for k in (kernels.hist_minmax_32, kernels.hist_minmax_64, kernels.minmax_32,
                  kernels.minmax_64, kernels.classify_nonfinite)
    )
    import_s = time.perf_counter() - t0
    state = f"compiled in this run ({misses} signatures)" if misses else "loaded from numba cache"
    print(f"import trtkld.histogram + kernel load: {import_s:.2f} s, numba kernels {state}; "
          "compile time excluded from all figures")

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before start - other processes share the cores, "
              "figures (especially 2 threads) may be low")
    n = int(args.mb * 1e6 / 4)
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(n, dtype=np.float32)
    data = {"normal": normal, "relu": np.maximum(normal * 2.0 + 0.3, 0.0)}
    gb = n * 4 / 1e9
    print(f"{args.mb:.0f} MB float32 ({n} values), {args.bins} bins, best of {args.repeat}")
    header = (f"{'data':8s} {'ours 1T':>9s} {'pass-1':>9s} {'ours 2T':>9s} {'np.hist':>9s} "
              f"{'x.sum()':>9s} {'1T/np':>7s} {'2T/np':>7s} {'1T/sum':>7s} {'2T cpu/wall':>11s}")
    print(header)
    for label, x in data.items():
        r = float(np.max(np.abs(x)))
        b = args.bins
        ours = gb / _best(lambda x=x, r=r, b=b: abs_histogram(x, b, r), args.repeat)
        stats = gb / _best(lambda x=x: tensor_stats(x), args.repeat)
        parts = {f"t{i}": p for i, p in enumerate(np.array_split(x, 8))}
        hs = HistogramSet(TensorHistogram(k, b, r) for k in parts)
        two_s, two_cpu = _best_cpu(lambda hs=hs, parts=parts: hs.update_many(parts), args.repeat)
        two = gb / two_s
        nph = gb / _best(lambda x=x, r=r, b=b: np.histogram(np.abs(x), bins=b, range=(0.0, r)),
                         max(1, args.repeat // 2))
        msum = gb / _best(x.sum, args.repeat)
        # the figures are only worth printing if ours is right
        ref, _ = np.histogram(np.abs(x[:100_000]), bins=b, range=(0.0, r))
        mine = abs_histogram(x[:100_000], b, r)
        if not np.array_equal(ref, mine):
            print(f"  note: {int(np.abs(ref - mine).sum())} of 100000 values binned differently "
                  "from np.histogram (bin-edge rounding)")
        print(f"{label:8s} {ours:9.2f} {stats:9.2f} {two:9.2f} {nph:9.2f} {msum:9.2f} "
              f"{ours / nph:7.1f} {two / nph:7.1f} {ours / msum:7.2f} {two_cpu:11.2f}")
    print("GB/s = input bytes / best wall time. '2T cpu/wall' near 2.0 means both workers ran at "
          "once; lower means the second core was busy with other processes.")


if __name__ == "__main__":
    main()
