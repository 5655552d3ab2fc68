"""The result type every search returns, and the input checks / scale rules they share.

Units: ``hist`` is an ``int64`` array ``(B,)`` of |x| counts, bin ``j`` covering
``[j * w, (j + 1) * w)`` in activation units (``w = hist_max / B``). ``amax`` is in activation
units; ``scale`` is the float32 value the TensorRT calibration cache stores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from trtkld.errors import SearchError

ALL_ZERO_FALLBACK = "all-zero histogram"

_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of one threshold search on one tensor's histogram.

    ``index`` is the winning candidate in the method's own terms: ppq ``r`` (kept bins),
    nvidia ``m`` (threshold ``(m + 0.5) * w``), modelopt / mse / percentile / max the number of
    whole bins below ``amax`` (``amax = index * w``). ``kl`` is ppq's log10 KL, the natural-log
    KL for nvidia / modelopt, ``nan`` for the others. ``divergences`` is the objective per
    candidate (KL, or mean squared error in activation units^2 for mse), ``inf`` where infinite.
    ``auto`` fills ``chosen_method`` (the winner) and ``scores`` (method -> histogram SQNR, dB).
    """

    method: str
    amax: float
    scale: np.float32
    index: int
    kl: float
    clipped_fraction: float
    candidates: Optional[np.ndarray] = None
    divergences: Optional[np.ndarray] = None
    fallback: Optional[str] = None
    chosen_method: Optional[str] = None
    scores: Optional[dict] = None


def _label(name: Optional[str]) -> str:
    return f"tensor {name!r}: " if name else ""


def as_counts(hist: object, name: Optional[str] = None) -> np.ndarray:
    """Validate a histogram and return it as a fresh ``int64`` array ``(B,)``.

    Integer arrays are taken as they are; float arrays (e.g. a PPQ float32 histogram) are
    accepted when every entry is finite, integral and non-negative.
    """
    arr = np.asarray(hist)
    where = _label(name)
    if arr.ndim != 1 or arr.size == 0:
        raise SearchError(f"{where}histogram must be a non-empty 1-D array of counts, "
                          f"found shape {arr.shape}")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.unsignedinteger) and arr.max() > np.iinfo(np.int64).max:
            raise SearchError(f"{where}histogram count exceeds int64, found {arr.max()}")
        counts = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise SearchError(f"{where}histogram counts must be finite, found NaN or Inf")
        if np.any(arr != np.floor(arr)):
            raise SearchError(f"{where}histogram counts must be whole numbers, "
                              f"found fractional values")
        if arr.max() >= 2.0**62:
            raise SearchError(f"{where}histogram count too large, found {arr.max()}")
        counts = arr.astype(np.int64)
    else:
        raise SearchError(f"{where}histogram must hold integer counts, found dtype {arr.dtype}")
    if counts.min() < 0:
        raise SearchError(f"{where}histogram counts must be >= 0, found {counts.min()}")
    # Prefix sums (and sums of h*j^2 in mse) stay exact only while the total is moderate.
    if int(counts.sum(dtype=np.float64)) >= 2**52:
        # the int64 sum may wrap around (to 0 or a negative number): add Python ints instead
        total = sum(int(c) for c in counts.tolist())
        raise SearchError(f"{where}histogram total must be < 2**52 counts, found {total} "
                          f"(about 2**{math.log2(total):.1f})")
    return counts


def resolve_width(num_bins: int, bin_width: Optional[float], hist_max: Optional[float],
                  name: Optional[str] = None) -> tuple[float, float]:
    """Return ``(w, R)``: bin width and histogram range, from either (or both consistent)."""
    where = _label(name)
    if bin_width is None and hist_max is None:
        raise SearchError(f"{where}a search needs bin_width or hist_max, found neither")
    for label, value in (("bin_width", bin_width), ("hist_max", hist_max)):
        if value is not None and not (math.isfinite(float(value)) and float(value) >= 0.0):
            raise SearchError(f"{where}{label} must be finite and >= 0, found {value}")
    if hist_max is not None:
        r = float(hist_max)
        w = r / num_bins
        if bin_width is not None and not math.isclose(float(bin_width), w, rel_tol=1e-9,
                                                      abs_tol=0.0):
            raise SearchError(f"{where}bin_width {bin_width} disagrees with hist_max / bins = "
                              f"{r} / {num_bins} = {w}")
        return w, r
    w = float(bin_width)
    return w, w * num_bins


def to_scale(value: float) -> np.float32:
    """Round a positive float64 scale to float32, kept finite and > 0 (never 0 or inf)."""
    if math.isnan(value):
        raise SearchError(f"internal error: scale is NaN ({value})")
    return np.float32(min(max(value, _F32_TINY), _F32_MAX))


def clipped_fraction(counts: np.ndarray, bin_width: float, amax: float) -> float:
    """Share of the histogram mass whose bin centre ``(j + 0.5) * w`` lies above ``amax``.

    Bin centres stand for the values, as in the mse search and the SQNR score.
    """
    total = int(counts.sum())
    if total == 0 or bin_width <= 0.0:
        return 0.0
    # First bin whose centre exceeds amax: (j + 0.5) * w > amax.
    first = int(np.searchsorted((np.arange(counts.size) + 0.5) * bin_width, amax, side="right"))
    return float(counts[first:].sum()) / total


def fallback_result(method: str, scale_divisor: float, reason: str = ALL_ZERO_FALLBACK
                    ) -> SearchResult:
    """The documented all-zero result: ``amax = 1.0`` with the method's scale rule."""
    return SearchResult(method=method, amax=1.0, scale=to_scale(1.0 / scale_divisor), index=0,
                        kl=math.nan, clipped_fraction=0.0, fallback=reason)
