"""Quality of a threshold judged on the histogram itself: SQNR score and guard findings.

Model (shared with the mse search): the mass of bin ``j`` sits at its centre
``c_j = (j + 0.5) * w``; INT8 quantization of |x| with ``scale`` gives
``q(c) = scale * min(rint(min(c, amax) / scale), 127)`` (round half to even, saturate at 127;
``amax`` clips first, which matters only when ``amax < 127 * scale``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult, as_counts, clipped_fraction

DEFAULT_MAX_CLIPPED_FRACTION = 0.01   # 1% of the values saturated
DEFAULT_MAX_SQNR_DROP_DB = 6.0        # ~one bit (6.02 dB) worse than plain max calibration


def histogram_sqnr_db(hist: np.ndarray, bin_width: float, amax: float, scale: float) -> float:
    """Quantization SQNR in dB: ``10 log10(sum h c^2 / sum h (c - q(c))^2)``.

    hist: ``(B,)`` counts; bin_width, amax, scale in activation units (scale > 0).
    Returns ``+inf`` when the quantization error is zero (including an all-zero histogram).
    """
    counts = as_counts(hist)
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0.0):
        raise SearchError(f"histogram SQNR needs a finite scale > 0, found {scale}")
    if not (math.isfinite(bin_width) and bin_width > 0.0):
        raise SearchError(f"histogram SQNR needs a finite bin_width > 0, found {bin_width}")
    if not (float(amax) > 0.0):
        raise SearchError(f"histogram SQNR needs amax > 0, found {amax}")
    h = counts.astype(np.float64)
    centre = (np.arange(counts.size) + 0.5) * bin_width
    level = np.minimum(np.rint(np.minimum(centre, float(amax)) / scale), 127.0)
    noise = float(np.sum(h * (centre - level * scale) ** 2))
    if noise == 0.0:
        return math.inf
    signal = float(np.sum(h * centre * centre))
    return 10.0 * math.log10(signal / noise)


@dataclass(frozen=True)
class GuardFinding:
    """One problem with a threshold. ``kind``: "clipped", "sqnr_drop" or "fallback".

    ``value`` is what was measured (clipped share; SQNR drop in dB; nan for fallback) and
    ``limit`` the threshold it broke.
    """

    kind: str
    message: str
    value: float
    limit: float


def guard_findings(hist: np.ndarray, bin_width: float, result: SearchResult, *,
                   max_clipped_fraction: float = DEFAULT_MAX_CLIPPED_FRACTION,
                   max_sqnr_drop_db: float = DEFAULT_MAX_SQNR_DROP_DB,
                   name: str | None = None) -> list[GuardFinding]:
    """Check a search result against its histogram; an empty list means nothing to report.

    - "clipped": more than ``max_clipped_fraction`` of the mass has its bin centre above amax.
    - "sqnr_drop": the result's histogram SQNR is more than ``max_sqnr_drop_db`` below that of
      plain max calibration (``amax = B * w``, ``scale = amax / 127``).
    - "fallback": the search used a fallback (reason in the message).
    """
    counts = as_counts(hist, name)
    where = f"tensor {name!r}: " if name else ""
    findings: list[GuardFinding] = []
    if result.fallback:
        findings.append(GuardFinding("fallback", f"{where}{result.method}: {result.fallback}",
                                     math.nan, math.nan))
    if counts.sum() == 0 or not bin_width > 0.0:
        return findings
    clipped = clipped_fraction(counts, bin_width, result.amax)
    if clipped > max_clipped_fraction:
        findings.append(GuardFinding(
            "clipped", f"{where}{result.method} clips {clipped:.4%} of the values "
                       f"(amax {result.amax:.6g}), limit {max_clipped_fraction:.4%}",
            clipped, max_clipped_fraction))
    r = counts.size * bin_width
    base = histogram_sqnr_db(counts, bin_width, r, r / 127.0)
    got = histogram_sqnr_db(counts, bin_width, result.amax, float(result.scale))
    drop = base - got if math.isfinite(base) else (0.0 if got == base else math.inf)
    if drop > max_sqnr_drop_db:
        findings.append(GuardFinding(
            "sqnr_drop", f"{where}{result.method} histogram SQNR {got:.2f} dB is {drop:.2f} dB "
                         f"below max calibration's {base:.2f} dB, limit {max_sqnr_drop_db} dB",
            drop, max_sqnr_drop_db))
    return findings
