"""Non-KL baselines: ``max`` (amax = R) and ``percentile`` (amax at a bin edge)."""
from __future__ import annotations

import math

import numpy as np

from trtkld.search.result import SearchResult, clipped_fraction, to_scale

DEFAULT_PERCENTILE = 99.99


def search_max(counts: np.ndarray, w: float, r: float) -> SearchResult:
    """``amax = R`` (the histogram range, i.e. the calibration set's absmax); index ``B``."""
    return SearchResult(method="max", amax=r, scale=to_scale(r / 127.0), index=counts.size,
                        kl=math.nan, clipped_fraction=0.0)


def search_percentile(counts: np.ndarray, w: float, r: float,
                      percentile: float = DEFAULT_PERCENTILE,
                      name: str | None = None) -> SearchResult:
    """``amax`` = the UPPER edge ``(k + 1) * w`` of the first bin ``k`` whose cumulative count
    reaches ``percentile / 100 * total`` (so at least that share of the mass lies below
    amax); ``index = k + 1``. ``percentile`` in ``(0, 100]``; 100 gives the top edge of the
    last nonzero bin (``R`` when that is the last bin). ``run_search`` has checked it against
    the registry's ``percentile`` option (``trtkld.search.registry``).
    """
    p = float(percentile)
    cum = np.cumsum(counts)
    target = p / 100.0 * float(cum[-1])
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(k, counts.size - 1)
    index = k + 1
    amax = r if index == counts.size else index * w
    return SearchResult(method="percentile", amax=amax, scale=to_scale(amax / 127.0),
                        index=index, kl=math.nan,
                        clipped_fraction=clipped_fraction(counts, w, amax))
