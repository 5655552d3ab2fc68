"""``ppq``: PPQ's KL observer (``TorchHistObserver.hist_to_scale_offset``), in numpy.

Rules (docs/kld-spec.md): pre-tweak bins ``[0, int(B*0.002))`` to 0 and bin ``int(B*0.002)``
to 1; candidates ``r = 128, 256, ..., B``; P and Q in float32 as PPQ computes them; KL with
log10 and eps 1e-30 in float64; smallest KL wins, ties to the smaller ``r``;
``scale = (r / B) * (R / B) * (B / 128)`` (PPQ's own expression), clamped to >= 1e-8.

Float32 sums (histogram total, tails, group sums, the Q total) are taken as the float32
rounding of the exact sum: PPQ's torch sums are float32 reductions in an unspecified order,
and the exact sum rounded once is the order-free value they approximate. Every other
float32 operation (the P fold, divisions) is one IEEE operation, identical to torch's.
With only ``B/128`` candidates the whole search is one ``(C, B)`` evaluation.
"""
from __future__ import annotations

import math

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult, clipped_fraction, to_scale

QB = 128
EPS = 1e-30
MIN_SCALE = 1e-8   # PPQ's OBSERVER_MIN_SCALE


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def ppq_divergences(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PPQ's log10 KL for every candidate ``r``.

    counts: int64 ``(B,)`` with ``B`` a positive multiple of 128 (checked by the caller).
    Returns ``(r values int64 (C,), KL float64 (C,))`` with ``C = B / 128``.
    """
    b = counts.size
    hist = counts.astype(np.float32)              # PPQ's histogram is float32
    cut = int(b * 0.002)
    hist[:cut] = 0
    hist[cut] = 1
    h64 = hist.astype(np.float64)                 # integral values: float64 sums are exact
    total = np.float32(h64.sum())
    rs = np.arange(QB, b + QB - 1, QB, dtype=np.int64)
    c = rs.size
    suffix = np.concatenate((np.cumsum(h64[::-1])[::-1], [0.0]))
    tails = _f32(suffix[rs])
    # P: per-bin h / total, except the folded last kept bin.
    p_base = (hist / total).astype(np.float64)
    p_last = ((hist[rs - 1] + tails) / total).astype(np.float64)
    # Q: group g of candidate r covers bins [g*r/128, (g+1)*r/128).
    width = rs // QB
    j = np.arange(b, dtype=np.int64)
    group = j[None, :] // width[:, None]          # (C, B); >= 128 past the kept bins
    kept = group < QB
    cum = np.concatenate(([0.0], np.cumsum(h64)))
    cum_nz = np.concatenate(([0], np.cumsum(hist > 0, dtype=np.int64)))
    bounds = np.arange(QB + 1, dtype=np.int64)[None, :] * width[:, None]   # (C, 129)
    gsum = _f32(cum[bounds[:, 1:]] - cum[bounds[:, :-1]])
    gcnt = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
    gval = gsum / np.maximum(gcnt, 1).astype(np.float32)                   # float32 (C, 128)
    q_total = np.array([math.fsum(row) for row in gval.astype(np.float64) * gcnt],
                       dtype=np.float64).astype(np.float32)
    qn = (gval / q_total[:, None]).astype(np.float64)                      # float32 values
    log_q = np.log10(qn + EPS)
    nonzero = hist > 0
    # log10(Q + eps): per group; zero bins of h have Q == 0.
    gi = np.minimum(group, QB - 1)
    log_q_bin = np.where(nonzero[None, :], np.take_along_axis(log_q, gi, axis=1),
                         math.log10(EPS))
    p = np.where(kept, p_base[None, :], 0.0)
    p[np.arange(c), rs - 1] = p_last
    log_p = np.log10(p + EPS)
    kl = np.sum(p * (log_p - log_q_bin), axis=1)
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
