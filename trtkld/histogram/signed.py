"""Signed histograms over ``[-R, R]``: what ONNX Runtime's entropy calibrator searches.

ORT's Entropy calibrator bins the raw (signed) values of a tensor into ``B`` bins over
``[-T, T]`` with ``T = max(|min|, |max|)`` and searches windows around the zero bin. trtkld's
|x| histograms cannot give that (the sign is gone), so this is a second, optional histogram,
filled in the same model pass.

Binning, consistent with the |x| rule of :mod:`trtkld.histogram.kernels` at ``B / 2`` bins::

    h = B // 2;  inv_width = float64(h) / float64(R)
    k(x) = min(int(float64(|x|) * inv_width), h - 1)
    x >= 0  ->  bin h + k(x)          (bin h starts at 0: ORT's "zero bin")
    x <  0  ->  bin h - 1 - k(x)

so ``counts[h:] + counts[:h][::-1]`` is exactly the |x| histogram with ``h`` bins over
``[0, R]``; NaN and +-Inf are never binned. (numpy's ``np.histogram`` puts a value lying exactly
on a negative bin edge one bin higher; nothing else differs.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from trtkld.errors import HistogramError


@njit(nogil=True, cache=True)
def _signed_counts(x, inv_width, half, counts):  # pragma: no cover - numba
    # Returns (min, max) of the finite values (inf, -inf when there is none).
    top = half - 1.0
    lo = np.inf
    hi = -np.inf
    for j in range(x.size):
        v = np.float64(x[j])
        a = abs(v)
        if not a < np.inf:          # NaN, +-Inf
            continue
        lo = min(lo, v)
        hi = max(hi, v)
        k = np.int64(min(a * inv_width, top))
        if v >= 0.0:
            counts[half + k] += 1
        else:
            counts[half - 1 - k] += 1
    return lo, hi


def _prepare(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    return flat


def signed_histogram(x: np.ndarray, num_bins: int, hist_max: float) -> np.ndarray:
    """Counts of the finite values of ``x`` (any shape, float) in ``num_bins`` bins over
    ``[-hist_max, hist_max]`` (module docstring); values beyond it land in the end bins.

    Returns int64 ``(num_bins,)``. ``num_bins`` must be even and >= 2; ``hist_max`` must be
    finite and > 0 (an all-zero tensor has no signed histogram; callers use the fallback).
    """
    if num_bins < 2 or num_bins % 2:
        raise HistogramError(f"signed histogram: expected an even bin count >= 2, found "
                             f"{num_bins}")
    r = float(hist_max)
    if not (np.isfinite(r) and r > 0.0):
        raise HistogramError(f"signed histogram: expected a finite range > 0, found {hist_max}")
    counts = np.zeros(num_bins, dtype=np.int64)
    flat = _prepare(x)
    if flat.size:
        _signed_counts(flat, np.float64(num_bins // 2) / np.float64(r), num_bins // 2, counts)
    return counts


class SignedHistogram:
    """Accumulated signed histogram of one tensor over a fixed range ``[-hist_max, hist_max]``,
    with the finite min and max seen (ORT clips its entropy threshold to them)."""

    def __init__(self, name: str, num_bins: int, hist_max: float) -> None:
        self.name = name
        self.hist_max = float(hist_max)
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.min = np.inf
        self.max = -np.inf

    def update(self, x: np.ndarray) -> None:
        if self.hist_max <= 0.0:
            return                     # all-zero tensor: nothing to bin (fallback downstream)
        flat = _prepare(x)
        if flat.size:
            half = self.counts.size // 2
            lo, hi = _signed_counts(flat, np.float64(half) / np.float64(self.hist_max), half,
                                    self.counts)
            self.min = min(self.min, float(lo))
            self.max = max(self.max, float(hi))

    def merge(self, other: SignedHistogram) -> SignedHistogram:
        """Sum of two histograms of the same tensor over the same range and bins."""
        if (other.name != self.name or other.counts.size != self.counts.size
                or other.hist_max != self.hist_max):
            raise HistogramError(
                f"signed histogram {self.name!r}: cannot merge {other.name!r} with "
                f"{other.counts.size} bins over +-{other.hist_max} into {self.counts.size} bins "
                f"over +-{self.hist_max}")
        out = SignedHistogram(self.name, self.counts.size, self.hist_max)
        out.counts = self.counts + other.counts
        out.min = min(self.min, other.min)
        out.max = max(self.max, other.max)
        return out
