"""``ppq``: PPQ's KL observer (``TorchHistObserver.hist_to_scale_offset``), in numpy.

Rules (docs/kld-spec.md): pre-tweak bins ``[0, int(B*0.002))`` to 0 and bin ``int(B*0.002)``
to 1; candidates ``r = 128, 256, ..., B``; P and Q in float32 as PPQ computes them; KL with
log10 and eps 1e-30 in float64; smallest KL wins, ties to the smaller ``r``; a candidate
whose kept bins are all empty after the pre-tweak (possible only for B >= 64000, where PPQ
divides 0 by 0) is infinite, never NaN;
``scale = (r / B) * (R / B) * (B / 128)`` (PPQ's own expression), clamped to >= 1e-8.

Float32 sums (histogram total, tails, group sums, the Q total) are taken as the float32
rounding of the exact sum: PPQ's torch sums are float32 reductions in an unspecified order,
and the exact sum rounded once is the order-free value they approximate. Every other
float32 operation (the P fold, divisions) is one IEEE operation, identical to torch's.
With only ``B/128`` candidates the whole search is one vectorised pass over all candidates'
kept bins (a ragged concatenation, ``sum r`` entries; 67k at B=4096).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult, clipped_fraction, to_scale

QB = 128
EPS = 1e-30
MIN_SCALE = 1e-8   # PPQ's OBSERVER_MIN_SCALE
_CHUNK_BINS = 1 << 21   # ragged entries per vectorised block (one block up to B = 16384)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


@lru_cache(maxsize=8)
def _layout(first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ragged layout of candidates ``r = first, first + 128, ..., last``, concatenated.

    Returns ``(bins, group_flat, last_pos, offsets)``: candidate ``c`` (0-based in this
    slice) owns ``offsets[c]:offsets[c] + r`` holding bins ``0..r-1``; ``group_flat`` indexes
    each bin's group in a ``(C, 128)`` table; ``last_pos`` is where its bin ``r-1`` sits.
    """
    rs = np.arange(first, last + 1, QB, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(rs)[:-1]))
    bins = np.concatenate([np.arange(r, dtype=np.int64) for r in rs])
    cand = np.repeat(np.arange(rs.size, dtype=np.int64), rs)
    group_flat = cand * QB + bins // (rs // QB)[cand]
    last_pos = offsets + rs - 1
    for arr in (bins, group_flat, last_pos, offsets):
        arr.setflags(write=False)
    return bins, group_flat, last_pos, offsets


def _chunks(rs: np.ndarray) -> list[tuple[int, int]]:
    """Split the candidates into runs of at most ``_CHUNK_BINS`` kept bins (index ranges)."""
    out, lo, size = [], 0, 0
    for k, r in enumerate(rs.tolist()):
        if size and size + r > _CHUNK_BINS:
            out.append((lo, k))
            lo, size = k, 0
        size += r
    out.append((lo, rs.size))
    return out


def ppq_divergences(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PPQ's log10 KL for every candidate ``r``.

    counts: int64 ``(B,)`` with ``B`` a positive multiple of 128 (checked by the caller).
    Returns ``(r values int64 (C,), KL float64 (C,))`` with ``C = B / 128``.
    """
    b = counts.size
    rs = np.arange(QB, b + QB - 1, QB, dtype=np.int64)
    hist = counts.astype(np.float32)              # PPQ's histogram is float32
    cut = int(b * 0.002)
    hist[:cut] = 0
    hist[cut] = 1
    h64 = hist.astype(np.float64)                 # integral values: float64 sums are exact
    total = np.float32(h64.sum())
    suffix = np.concatenate((np.cumsum(h64[::-1])[::-1], [0.0]))
    tails = _f32(suffix[rs])
    # P: per-bin h / total, except the folded last kept bin.
    p_base = (hist / total).astype(np.float64)
    p_last = ((hist[rs - 1] + tails) / total).astype(np.float64)
    # Q per group g of candidate r: bins [g*r/128, (g+1)*r/128).
    width = rs // QB
    cum = np.concatenate(([0.0], np.cumsum(h64)))
    cum_nz = np.concatenate(([0], np.cumsum(hist > 0, dtype=np.int64)))
    bounds = np.arange(QB + 1, dtype=np.int64)[None, :] * width[:, None]   # (C, 129)
    gsum = _f32(cum[bounds[:, 1:]] - cum[bounds[:, :-1]])
    gcnt = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
    gval = gsum / np.maximum(gcnt, 1).astype(np.float32)                   # float32 (C, 128)
    q_total = np.array([math.fsum(row) for row in gval.astype(np.float64) * gcnt],
                       dtype=np.float64).astype(np.float32)
    empty = q_total == 0        # only when B >= 64000: int(B*0.002) >= r zeroes every kept bin
    with np.errstate(invalid="ignore", divide="ignore"):
        qn = gval / np.where(empty, np.float32(1), q_total)[:, None]
    log_q = np.log10(qn.astype(np.float64) + EPS)                            # (C, 128)
    # The candidates' kept bins as one ragged vector; zero bins of h have Q == 0.
    log_p_base = np.log10(p_base + EPS)
    log_p_last = np.log10(p_last + EPS)
    nonzero = hist > 0
    kl = np.empty(rs.size)
    for lo, hi in _chunks(rs):
        bins, group_flat, last_pos, offsets = _layout(int(rs[lo]), int(rs[hi - 1]))
        p = p_base[bins]
        log_p = log_p_base[bins]
        p[last_pos] = p_last[lo:hi]
        log_p[last_pos] = log_p_last[lo:hi]
        log_q_bin = np.where(nonzero[bins], log_q[lo:hi].ravel()[group_flat], math.log10(EPS))
        kl[lo:hi] = np.add.reduceat(p * (log_p - log_q_bin), offsets)
    kl[empty] = np.inf          # PPQ would divide 0 by 0 here; NaN must never win
    return rs, kl


def search_ppq(counts: np.ndarray, w: float, r: float, name: str | None = None) -> SearchResult:
    """PPQ KL search; ``amax = r * w`` (PPQ's T), ``scale`` = PPQ's scale ``T / 128``."""
    b = counts.size
    if b < QB or b % QB:
        where = f"tensor {name!r}: " if name else ""
        raise SearchError(f"{where}ppq needs a bin count that is a multiple of {QB} "
                          f"(PPQ reshapes the histogram into {QB} groups), found {b} bins")
    rs, kl = ppq_divergences(counts)
    best = int(np.argmin(kl))                     # first minimum = stable sort's smaller r
    best_r = int(rs[best])
    scale = max((best_r / b) * w * (b / QB), MIN_SCALE)
    amax = best_r * w
    return SearchResult(method="ppq", amax=amax, scale=to_scale(scale), index=best_r,
                        kl=float(kl[best]), clipped_fraction=clipped_fraction(counts, w, amax),
                        candidates=rs, divergences=kl)
