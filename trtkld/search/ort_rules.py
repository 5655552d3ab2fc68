"""ONNX Runtime's calibration rules, reimplemented from its documented behaviour, on trtkld's
histograms (so they run on the one histogram collection every other method uses).

``ort-entropy`` (ORT ``CalibrationMethod.Entropy`` with ``num_bins=2048,
num_quantized_bins=128``): on a SIGNED histogram of ``B`` bins over ``[-T, T]`` (``T`` the
absmax; :mod:`trtkld.histogram.signed`), for each half-width ``i`` from ``Q/2`` to ``B/2`` the
window of bins ``[B/2 - i, min(B/2 + i + 1, B))`` is the candidate, threshold ``(edge[start],
edge[end])``:

* reference ``p``: the window's counts with the mass left of it added to its first bin and the
  mass right of it to its last bin;
* ``q``: the window's counts (without the outliers) merged into ``Q`` bins of
  ``len // Q`` source bins (the remainder added to the last merged bin), then spread evenly
  back over the source bins where ``p`` is nonzero, as integers (ORT keeps ``q`` in an int64
  array, which truncates); source bins beyond ``Q * (len // Q)`` stay 0;
* both smoothed (zeros get ``eps = 1e-4``, the nonzero bins lose it evenly), normalised, and
  ``KL(p || q)``; a window whose ``p`` or ``q`` is all zero scores ``inf``.

The window with the smallest KL wins (the first on ties), its thresholds are clipped to the
finite min / max seen, and as for every trtkld peer the symmetric ``amax = max(|lo|, |hi|)``
gives ``scale = amax / 127``. ORT computes the KL in float32; this computes it in float64, so a
near-tie may resolve to a neighbouring window.

``ort-percentile`` (ORT ``Percentile``, symmetric, 2048 bins, 99.999): on the |x| histogram,
the LOWER edge ``k * w`` of the first bin ``k`` whose cumulative share reaches the percentile
(numpy ``searchsorted``), clipped to the absmax. ORT's own |x| histogram starts at the
smallest |x| rather than 0; on activations (which reach 0) the two agree.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult, fallback_result, to_scale

ORT_ENTROPY_BINS = 2048
ORT_QUANTIZED_BINS = 128
ORT_PERCENTILE = 99.999
_EPS = 1e-4


@njit(cache=True, nogil=True)   # nogil: threads search several tensors at once
def _entropy_curve(hist, num_quantized_bins):  # pragma: no cover - numba
    """KL of every window (module docstring), one fused pass per window: prefix sums give
    each window's outliers, each merged bin's mass and its count of nonzero ``p`` bins, and
    the smoothing's normalisers are known in closed form (smoothing keeps ``sum(p)``)."""
    b = hist.size
    zero = b // 2
    half_q = num_quantized_bins // 2
    kl = np.full(zero - half_q + 1, np.inf)
    cum = np.zeros(b + 1, dtype=np.int64)
    nzc = np.zeros(b + 1, dtype=np.int64)
    for j in range(b):
        cum[j + 1] = cum[j] + hist[j]
        nzc[j + 1] = nzc[j] + (1 if hist[j] != 0 else 0)
    total = cum[b]
    qval = np.zeros(num_quantized_bins)
    for i in range(half_q, zero + 1):
        start = zero - i
        end = min(zero + i + 1, b)
        size = end - start
        first = hist[start] + cum[start]             # p[0]: the left outliers added
        last = hist[end - 1] + (total - cum[end])   # p[-1]: the right outliers added

        nz_p = (nzc[end] - nzc[start] - (1 if hist[start] != 0 else 0)
                - (1 if hist[end - 1] != 0 else 0) + (1 if first != 0 else 0)
                + (1 if last != 0 else 0))
        if nz_p == 0:
            continue
        merged = size // num_quantized_bins
        q_sum = 0.0
        nz_q = 0
        for k in range(num_quantized_bins):
            lo = start + k * merged
            hi = lo + merged
            mass = cum[hi] - cum[lo]
            if k == num_quantized_bins - 1:
                mass += cum[end] - cum[hi]               # the remainder joins the last bin
            norm = nzc[hi] - nzc[lo]
            if lo == start:
                norm += (1 if first != 0 else 0) - (1 if hist[start] != 0 else 0)
            if lo <= end - 1 < hi:
                norm += (1 if last != 0 else 0) - (1 if hist[end - 1] != 0 else 0)
            v = np.floor(mass / norm) if norm != 0 else 0.0   # int64 storage truncates
            qval[k] = v
            q_sum += v * merged
            if v != 0.0:
                nz_q += merged
        if nz_q == 0:
            continue
        eps1_p = _EPS * (size - nz_p) / nz_p
        eps1_q = _EPS * (size - nz_q) / nz_q
        # A bin with p = q = 0 adds the same term everywhere: count those, loop over the rest.
        zero_term = (_EPS / total) * math.log((_EPS / total) / (_EPS / q_sum))
        d = 0.0
        for k in range(num_quantized_bins + 1):
            lo = start + k * merged
            hi = lo + merged if k < num_quantized_bins else end
            qj = qval[k] if k < num_quantized_bins else 0.0   # beyond Q * merged: q stays 0
            if qj == 0.0 and cum[hi] == cum[lo] and lo != start and hi != end:
                d += (hi - lo) * zero_term            # no mass, no outlier end: all p = 0
                continue
            qs = (qj - eps1_q if qj != 0.0 else _EPS) / q_sum
            p_zero = _EPS / total
            zero_p_term = p_zero * math.log(p_zero / qs)
            for j in range(max(lo, start + 1), min(hi, end - 1)):   # the ends come below
                pj = hist[j]
                if pj == 0:
                    d += zero_p_term
                else:
                    ps = (pj - eps1_p) / total
                    d += ps * math.log(ps / qs)
            for j, pj in ((start, first), (end - 1, last)):
                if lo <= j < hi:
                    ps = (pj - eps1_p if pj != 0 else _EPS) / total
                    d += ps * math.log(ps / qs)
        kl[i - half_q] = d
    return kl


def search_ort_entropy(signed_counts: np.ndarray, hist_max: float, vmin: float, vmax: float,
                       num_quantized_bins: int = ORT_QUANTIZED_BINS,
                       name: str | None = None) -> SearchResult:
    """ORT's entropy threshold on a signed histogram (module docstring).

    Args:
        signed_counts: int ``(B,)`` counts over ``[-hist_max, hist_max]``, ``B`` even and
            ``>= num_quantized_bins``.
        hist_max: ``T`` (activation units).
        vmin, vmax: the finite min and max of the values binned.
    Returns:
        SearchResult with ``method="ort-entropy"``, the symmetric ``amax`` and ``scale =
        amax / 127``, ``index`` = the winning half-width ``i``, ``kl`` its divergence,
        ``candidates``/``divergences`` the curve; the all-zero fallback when nothing was binned.
    """
    counts = np.asarray(signed_counts, dtype=np.int64)
    b = counts.size
    where = f"tensor {name!r}: " if name else ""
    if b % 2 or b < num_quantized_bins or num_quantized_bins < 2 or num_quantized_bins % 2:
        raise SearchError(f"{where}ort-entropy needs an even bin count >= the (even) number of "
                          f"quantized bins {num_quantized_bins}, found {b} bins")
    t = float(hist_max)
    if not counts.any() or not (math.isfinite(t) and t > 0.0):
        return fallback_result("ort-entropy", 127.0)
    kl = _entropy_curve(counts, int(num_quantized_bins))
    best = int(np.argmin(kl))
    i = best + num_quantized_bins // 2
    zero = b // 2
    w = 2.0 * t / b
    start, end = zero - i, min(zero + i + 1, b)
    lo = max(-t + start * w, float(vmin))
    hi = min(-t + end * w, float(vmax))
    amax = max(abs(lo), abs(hi))
    if not (math.isfinite(amax) and amax > 0.0):
        return fallback_result("ort-entropy", 127.0, reason="empty entropy range")
    outside = int(counts[:start].sum() + counts[end:].sum())
    return SearchResult(
        method="ort-entropy", amax=amax, scale=to_scale(amax / 127.0), index=i,
        kl=float(kl[best]), clipped_fraction=outside / int(counts.sum()),
        candidates=np.arange(num_quantized_bins // 2, zero + 1), divergences=kl,
    )


def search_ort_percentile(counts: np.ndarray, w: float, r: float,
                          percentile: float = ORT_PERCENTILE) -> SearchResult:
    """ORT's symmetric percentile on an |x| histogram: the lower edge of the bin where the
    cumulative share reaches ``percentile`` (never above ``r``; at least one bin wide)."""
    p = float(percentile)
    if not (0.0 < p <= 100.0):
        raise SearchError(f"ort-percentile: percentile must be in (0, 100], found {percentile}")
    total = float(counts.sum())
    if total == 0 or w <= 0.0:
        return fallback_result("ort-percentile", 127.0)
    cdf = np.cumsum(counts / total)
    k = int(np.searchsorted(cdf, p / 100.0, side="left"))
    amax = min(max(k, 1) * w, r)
    return SearchResult(method="ort-percentile", amax=amax, scale=to_scale(amax / 127.0),
                        index=k, kl=math.nan,
                        clipped_fraction=float(counts[k:].sum()) / total)
