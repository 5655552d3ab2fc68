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

from trtkld.histogram.collection import HistogramSet
from trtkld.histogram.stats import TensorStats, tensor_stats
from trtkld.histogram.tensor import TensorHistogram, abs_histogram
from trtkld.histogram.tracker import AbsmaxTracker

__all__ = [
    "AbsmaxTracker",
    "HistogramSet",
    "TensorHistogram",
    "TensorStats",
    "abs_histogram",
    "tensor_stats",
]
