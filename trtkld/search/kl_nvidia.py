"""``nvidia`` (GTC 2017) and ``modelopt`` (pytorch-quantization / ModelOpt) KL searches.

Both evaluate, for every candidate ``i`` (bins kept), the natural-log KL(P || Q) where
``P = h[:i]`` with the tail ``sum(h[i:])`` folded into ``P[i-1]``, and ``Q`` merges ``h[:i]``
into 128 levels (bin ``j`` in level ``digitize(j, linspace(0, i, 129)) - 1``) and spreads each
level's mass evenly over its nonzero bins. See docs/kld-spec.md for the exact rules.

Fast path. With ``N = sum(h)``, ``M = sum(h[:i])``, level ``L`` holding ``n_L`` nonzero bins
of total ``s_L``, a kept bin ``j != i-1`` has ``log(P_j / Q_j) = log(h_j n_L / s_L) + log(M/N)``,
so the unfolded KL is ``(1/N) sum_L E_L + (M/N) log(M/N)`` with
``E_L = sum_{j in L} h_j log h_j - s_L log s_L + s_L log n_L``. Every term comes from prefix
sums over bins, so a candidate costs O(levels), not O(bins). Only the last kept bin differs
when a tail exists; it is corrected separately (and is infinite when ``h[i-1] == 0``).

``linspace(0, i, 129)[k] = k * (i / 128)`` is exact in float64 (``i / 128`` is a power-of-two
division), so level ``k`` starts at the integer ``ceil(k * i / 128)``: no rounding to mimic.

``h log h`` terms are rounded to a power-of-two grid fine enough that all their prefix sums
are exact; a level's sum then depends on its contents only, so candidates whose P and Q are
identical get bit-identical KL (ties resolve by the first/last-minimum rule, as in a direct
loop). The sum over levels runs left to right for the same reason.

All candidates share one dense table indexed by (level start, level width): a candidate's
levels are gathered from it, so the whole search costs O(B * B/128) table entries plus
O(C * 128) gathers.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult, clipped_fraction, to_scale

LEVELS = 128
_LEVEL_BLOCK = 8    # levels gathered per block in _sum_levels
MAX_BINS = 16384   # the dense (start, width) table grows as B**2 / 128 (~230 MB peak here)


@lru_cache(maxsize=4)
def _layout(first: int, last: int) -> tuple[np.ndarray, int]:
    """Level geometry of candidates ``first..last`` (depends on the bin counts only).

    Returns ``(flat, max_width)``: ``flat`` int64 ``(LEVELS, C)`` (level-major, so sums over
    levels run left to right) is the index of each level's ``(start, width)`` pair in a dense
    ``(B + 1, max_width)`` table, row = start, column = width - 1.
    """
    cand = np.arange(first, last + 1, dtype=np.int64)
    bounds = level_starts(cand).T                 # (LEVELS + 1, C)
    starts = np.ascontiguousarray(bounds[:-1])
    widths = bounds[1:] - bounds[:-1]
    max_width = int(widths.max()) if widths.size else 1
    flat = starts * max_width + (widths - 1)
    flat.setflags(write=False)
    return flat, max_width


def level_starts(candidates: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """First bin of each level, ``(C, levels + 1)`` int64; column ``levels`` equals ``i``.

    Equals ``searchsorted`` of ``digitize(arange(i), linspace(0, i, levels + 1)) - 1``
    for ``levels`` a power of two (exact float grid).
    """
    k = np.arange(levels + 1, dtype=np.int64)
    return (k[None, :] * candidates[:, None] + (levels - 1)) // levels


def _sum_levels(table: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``table[flat].sum(axis=0)`` added strictly left to right over the levels.

    Gathered in blocks of ``_LEVEL_BLOCK`` levels into one small reused buffer whose row 0
    carries the running sum (numpy reduces axis 0 row by row), so no multi-MB temporary is
    allocated per call (those cost page faults on every call once the allocator maps them).
    """
    c = flat.shape[1]
    buf = np.empty((_LEVEL_BLOCK + 1, c))
    buf[0] = 0.0
    for k in range(0, flat.shape[0], _LEVEL_BLOCK):
        rows = flat[k:k + _LEVEL_BLOCK]
        np.take(table, rows, out=buf[1:rows.shape[0] + 1])
        buf[0] = buf[:rows.shape[0] + 1].sum(axis=0)
    return buf[0].copy()


def kl_divergences(h: np.ndarray, first: int, last: int) -> np.ndarray:
    """Natural-log KL(P || Q) for every candidate ``i`` in ``first..last`` (``first >= 128``).

    h: int64 ``(B,)`` counts (already pre-tweaked as the method requires), ``last <= B``.
    Returns float64 ``(last - first + 1,)``; ``inf`` where P has mass on a bin where Q has
    none, or Q has no mass at all.
    """
    cand = np.arange(first, last + 1, dtype=np.int64)
    kl = np.full(cand.size, np.inf)
    total = int(h.sum())
    if total == 0 or cand.size == 0:
        return kl
    flat, max_width = _layout(first, last)
    b = h.size
    hf = h.astype(np.float64)
    cum_h = np.concatenate(([0], np.cumsum(h)))
    cum_nz = np.concatenate(([0], np.cumsum(h > 0, dtype=np.int64)))
    hlogh = hf * np.log(np.maximum(hf, 1.0))
    # Grid 2**e with (N log N) / 2**e < 2**52: every prefix sum of grid values is exact.
    bound = max(total * math.log(max(total, 2)), 1.0)
    grid = 2.0 ** (math.frexp(bound)[1] - 52)
    cum_t = np.concatenate(([0.0], np.cumsum(np.rint(hlogh / grid) * grid)))

    # Dense table over every (level start a, level width): E and the level's mass/count.
    a = np.arange(b + 1, dtype=np.int64)[:, None]
    end = np.minimum(a + np.arange(1, max_width + 1, dtype=np.int64)[None, :], b)
    s = cum_h[end] - cum_h[a]                     # level mass, exact int64
    n = cum_nz[end] - cum_nz[a]                   # nonzero bins in the level
    d = cum_t[end] - cum_t[a]                     # sum h log h over the level, exact on grid
    sf = s.astype(np.float64)
    log_s = np.log(np.maximum(sf, 1.0))
    log_n = np.log(np.maximum(n, 1).astype(np.float64))
    g = np.rint(sf * log_s / grid) * grid         # same grid: a one-bin level gives E == 0
    e = ((d - g) + sf * log_n).ravel()
    sum_e = _sum_levels(e, flat)

    kept = cum_h[cand]                            # M
    tail = total - kept                           # T
    log_total = math.log(total)
    ok = kept > 0
    km = kept[ok].astype(np.float64)
    kl[ok] = sum_e[ok] / total + (km / total) * (np.log(km) - log_total)
    # The folded last bin (always in the last level): swap its unfolded term for the folded.
    fold = ok & (tail > 0)
    hl = h[cand - 1]
    kl[fold & (hl == 0)] = np.inf
    fix = np.flatnonzero(fold & (hl > 0))
    if fix.size:
        last_flat = flat[-1, fix]
        s_last = sf.ravel()[last_flat]
        log_kept = np.log(kept[fix].astype(np.float64))
        common = log_n.ravel()[last_flat] + (log_kept - log_total)
        hl_f = hl[fix].astype(np.float64)
        folded = hl_f + tail[fix]
        log_s_last = np.log(s_last)
        new = folded / total * ((np.log(folded) - log_s_last) + common)
        old = hl_f / total * ((np.log(hl_f) - log_s_last) + common)
        kl[fix] = kl[fix] + (new - old)
    return kl


def _check_bins(method: str, b: int, name: str | None) -> None:
    if b > MAX_BINS:
        where = f"tensor {name!r}: " if name else ""
        raise SearchError(f"{where}{method} supports at most {MAX_BINS} bins (memory grows as "
                          f"bins**2), found {b}; collect fewer bins or rebin")


def search_nvidia(counts: np.ndarray, w: float, r: float, name: str | None = None
                  ) -> SearchResult:
    """GTC 2017: ``i in 128..B-1``, first minimum ``m``, threshold ``(m + 0.5) * w``.

    With ``B <= 128`` there is no candidate: the threshold falls back to ``R`` (max) and
    ``fallback`` says so.
    """
    b = counts.size
    _check_bins("nvidia", b, name)
    cand = np.arange(LEVELS, b, dtype=np.int64)
    if cand.size == 0:
        return _no_candidate("nvidia", counts, w, r)
    kl = kl_divergences(counts, LEVELS, b - 1)
    best = int(np.argmin(kl))          # first minimum; all-inf -> 0 -> m = 128
    m = int(cand[best])
    amax = (m + 0.5) * w
    return SearchResult(method="nvidia", amax=amax, scale=to_scale(amax / 127.0), index=m,
                        kl=float(kl[best]), clipped_fraction=clipped_fraction(counts, w, amax),
                        candidates=cand, divergences=kl)


def search_modelopt(counts: np.ndarray, w: float, r: float, name: str | None = None
                    ) -> SearchResult:
    """ModelOpt: ``h[0] = h[1]``, ``i in 128..B``, last minimum, ``amax = i * w``.

    A candidate whose Q has no mass is infinite (not NaN); all infinite gives ``i = B``.
    With ``B < 128`` there is no candidate: ``amax = R`` and ``fallback`` says so.
    """
    b = counts.size
    _check_bins("modelopt", b, name)
    cand = np.arange(LEVELS, b + 1, dtype=np.int64)
    if cand.size == 0:
        return _no_candidate("modelopt", counts, w, r)
    tweaked = counts.copy()
    if b > 1:
        tweaked[0] = tweaked[1]
    kl = kl_divergences(tweaked, LEVELS, b)
    best = cand.size - 1 - int(np.argmin(kl[::-1]))   # last minimum
    i = int(cand[best])
    amax = i * w if i < b else r
    return SearchResult(method="modelopt", amax=amax, scale=to_scale(amax / 127.0), index=i,
                        kl=float(kl[best]), clipped_fraction=clipped_fraction(counts, w, amax),
                        candidates=cand, divergences=kl)


def _no_candidate(method: str, counts: np.ndarray, w: float, r: float) -> SearchResult:
    return SearchResult(method=method, amax=r, scale=to_scale(r / 127.0), index=counts.size,
                        kl=math.nan, clipped_fraction=0.0,
                        candidates=np.zeros(0, dtype=np.int64), divergences=np.zeros(0),
                        fallback=f"{counts.size} bins leave no KL candidate "
                                 f"(needs >= {LEVELS + 1} for nvidia, >= {LEVELS} for modelopt); "
                                 f"amax = hist_max")
