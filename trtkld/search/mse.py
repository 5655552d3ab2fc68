"""``mse``: the threshold minimising the squared error of symmetric INT8 quantization.

Model: the histogram's mass sits at the bin centres ``c_j = (j + 0.5) * w``. For a threshold
``amax`` the scale is ``s = amax / 127``; a centre ``c <= amax`` is rounded to the nearest level
``k * s`` (``k`` in 0..127 for |x|), a centre above ``amax`` is clipped to ``amax``. The
objective is ``sum_j h_j (c_j - q(c_j))**2 / N`` (activation units squared).

Candidates: every bin edge ``amax = i * w`` for ``i = 1..B``; the FIRST minimum wins (the
smaller threshold on a tie). ``index = i``.

Fast path, in units of ``w``: level ``k`` of candidate ``i`` holds the bins with
``(2k - 1) i <= 127 (2j + 1) < (2k + 1) i`` (a tie between two levels has the same error
either way), a contiguous run ``[a, b)``. With ``t = j - a`` the level's error is
``sum h t^2 + 2 e sum h t + e^2 sum h`` where ``e = a + 0.5 - k i / 127``; the three sums
come exactly from int64 prefix sums of ``h``, ``h j``, ``h j^2``. So all ``B`` candidates cost
``O(B * 128)`` in one vectorised pass (chunked), not ``O(B^2)``.
"""
from __future__ import annotations

import math

import numpy as np

from trtkld.search.result import SearchResult, clipped_fraction, to_scale

LEVELS = 127           # positive INT8 levels 1..127 (plus 0)
_CHUNK = 512           # candidates per block: (129, chunk) arrays


def mse_errors(counts: np.ndarray) -> np.ndarray:
    """Sum of squared errors for ``amax = i * w``, ``i = 1..B``, in units of ``w**2``.

    counts: int64 ``(B,)``. Returns float64 ``(B,)``.
    """
    b = counts.size
    j = np.arange(b, dtype=np.int64)
    # int64 is exact while N * B^2 fits; beyond that float64 (documented rounding).
    exact = float(counts.sum()) * float(b) ** 2 < 2.0**62
    dtype = np.int64 if exact else np.float64
    hc = counts.astype(dtype)
    m0 = np.concatenate(([0], np.cumsum(hc))).astype(dtype)
    m1 = np.concatenate(([0], np.cumsum(hc * j))).astype(dtype)
    m2 = np.concatenate(([0], np.cumsum(hc * j * j))).astype(dtype)
    out = np.empty(b)
    k = np.arange(LEVELS + 2, dtype=np.int64)[:, None]          # level k starts at row k
    for lo in range(1, b + 1, _CHUNK):
        i = np.arange(lo, min(lo + _CHUNK, b + 1), dtype=np.int64)[None, :]
        # First bin of level k: smallest j with 254 j >= (2k - 1) i - 127, clipped to [0, i].
        num = (2 * k - 1) * i - 127
        start = np.clip(-((-num) // 254), 0, i)                  # (129, C)
        a, e_end = start[:-1], start[1:]
        s0 = m0[e_end] - m0[a]
        s1 = (m1[e_end] - m1[a]) - a * s0                         # sum h (j - a)
        s2 = (m2[e_end] - m2[a]) - 2 * a * (m1[e_end] - m1[a]) + a * a * s0
        kk = k[:-1]
        e = (127 * (2 * a + 1) - 2 * kk * i) / 254.0             # a + 0.5 - k i / 127
        inside = (s2.astype(np.float64) + 2.0 * e * s1 + e * e * s0).sum(axis=0)
        # Clipped bins j >= i: (j + 0.5 - i)^2 = t^2 + t + 1/4 with t = j - i.
        i1 = i[0]
        c0 = m0[b] - m0[i1]
        c1 = (m1[b] - m1[i1]) - i1 * c0
        c2 = (m2[b] - m2[i1]) - 2 * i1 * (m1[b] - m1[i1]) + i1 * i1 * c0
        out[lo - 1:lo - 1 + i1.size] = inside + (c2 + c1).astype(np.float64) + 0.25 * c0
    return out


def search_mse(counts: np.ndarray, w: float, r: float) -> SearchResult:
    """Minimum-MSE threshold over the bin edges; ``divergences`` holds the MSE per candidate."""
    b = counts.size
    err = mse_errors(counts)
    best = int(np.argmin(err))                    # first minimum: smaller amax on a tie
    i = best + 1
    amax = r if i == b else i * w
    mse = err * (w * w) / float(counts.sum())
    return SearchResult(method="mse", amax=amax, scale=to_scale(amax / 127.0), index=i,
                        kl=math.nan, clipped_fraction=clipped_fraction(counts, w, amax),
                        candidates=np.arange(1, b + 1, dtype=np.int64), divergences=mse)

