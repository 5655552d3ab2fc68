"""|x| histograms of activation tensors (the calibration hot loop).

Two passes over the calibration data::

    tracker = AbsmaxTracker(names)          # pass 1: finite absmax + NaN/Inf counts
    for batch in data: tracker.update_many(collector.run(batch))
    hists = tracker.histograms(4096)        # pass 2: fixed range [0, absmax]
    for batch in data: hists.update_many(collector.run(batch))
    hists.save("hists.npz")

Binning rule: ``index = min(int(float64(|x|) * (float64(B) / float64(R))), B - 1)``; NaN/+-Inf
are counted, never binned. See docs/architecture.md.
"""
from __future__ import annotations

import threading

from trtkld.histogram.collection import HistogramSet
from trtkld.histogram.stats import TensorStats, tensor_stats
from trtkld.histogram.tensor import TensorHistogram, abs_histogram
from trtkld.histogram.tracker import AbsmaxTracker


def preload_kernels() -> threading.Thread:
    """Import numba and load the float32 kernels on a background thread; returns the thread.

    numba's import and cache loading take about half a second; started before the model
    session is built, they overlap ONNX Runtime's work (which releases the GIL) instead of
    delaying the first histogram. Kernels load once; callers never need to join.
    """
    def load() -> None:
        try:
            from trtkld.histogram.kernels import load_float32_kernels

            load_float32_kernels()
        except Exception:  # noqa: BLE001 - the first real use raises it where it is handled
            pass

    thread = threading.Thread(target=load, name="trtkld-numba-load", daemon=True)
    thread.start()
    return thread


__all__ = [
    "AbsmaxTracker",
    "HistogramSet",
    "TensorHistogram",
    "TensorStats",
    "abs_histogram",
    "preload_kernels",
    "tensor_stats",
]
