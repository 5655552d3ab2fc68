"""Threshold searches over |x| histograms: one registry keyed by method name.

``run_search(method, hist, bin_width=..., hist_max=...)`` validates the histogram, applies the
all-zero fallback (``amax = 1.0`` with the method's scale rule, ``fallback="all-zero
histogram"``) and dispatches. Methods (fixed order, see ``available_methods``):

- ``ppq``       PPQ's KL observer (bin count must be a multiple of 128); scale = T / 128.
- ``nvidia``    GTC 2017 KL procedure, threshold (m + 0.5) * w.
- ``modelopt``  NVIDIA ModelOpt / pytorch-quantization entropy calibration, amax = i * w.
  (nvidia / modelopt: at most 16384 bins; too few bins for a candidate -> amax = R.)
- ``max``       amax = R.
- ``percentile`` amax at the upper edge of the bin reaching ``percentile`` (default 99.99).
- ``mse``       minimum squared INT8 error over the bin edges.
- ``auto``      all of the above, best histogram SQNR wins.

Every scale is a finite float32 > 0; every method but ppq uses ``scale = amax / 127``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.auto import search_auto
from trtkld.search.baselines import search_max, search_percentile
from trtkld.search.batch import SearchRequest, run_searches
from trtkld.search.kl_nvidia import search_modelopt, search_nvidia
from trtkld.search.kl_ppq import QB, search_ppq
from trtkld.search.mse import search_mse
from trtkld.search.quality import GuardFinding, guard_findings, histogram_sqnr_db
from trtkld.search.result import SearchResult, as_counts, fallback_result, resolve_width

__all__ = ["DEFAULT_BINS", "GuardFinding", "SearchRequest", "SearchResult", "available_methods",
           "get_search", "guard_findings", "histogram_sqnr_db", "run_search", "run_searches"]

DEFAULT_BINS = {"ppq": 4096, "nvidia": 2048, "modelopt": 2048, "max": 2048, "percentile": 2048,
                "mse": 2048, "auto": 4096}


@dataclass(frozen=True)
class _Method:
    func: Callable[..., SearchResult]
    scale_divisor: float              # the all-zero fallback's scale = 1.0 / scale_divisor
    options: tuple[str, ...] = ()     # keyword options the method accepts
    takes_name: bool = False
    bins_multiple: int = 1            # the bin count must be a multiple of this


_METHODS = {
    "ppq": _Method(search_ppq, float(QB), takes_name=True, bins_multiple=QB),
    "nvidia": _Method(search_nvidia, 127.0, takes_name=True),
    "modelopt": _Method(search_modelopt, 127.0, takes_name=True),
    "max": _Method(search_max, 127.0),
    "percentile": _Method(search_percentile, 127.0, ("percentile",), takes_name=True),
    "mse": _Method(search_mse, 127.0),
    "auto": _Method(search_auto, 127.0, ("percentile",), takes_name=True),
}


def available_methods() -> list[str]:
    """Method names in a fixed order: ppq, nvidia, modelopt, max, percentile, mse, auto."""
    return list(_METHODS)


def run_search(method: str, hist: np.ndarray, *, bin_width: Optional[float] = None,
               hist_max: Optional[float] = None, **options) -> SearchResult:
    """Run one search on one tensor's histogram.

    hist: ``(B,)`` integer counts of |x| over ``[0, hist_max]``; give ``bin_width`` (``w``)
    or ``hist_max`` (``R = B * w``) or both (must agree). ``options``: ``percentile=`` for
    percentile/auto; ``name=`` (tensor name, used in error messages) for every method.
    Raises SearchError for an unknown method or option, a malformed histogram, or a bin
    count the method cannot use (ppq: not a positive multiple of 128).
    """
    name = options.pop("name", None)
    spec = _METHODS.get(method)
    where = f"tensor {name!r}: " if name else ""
    if spec is None:
        raise SearchError(f"{where}unknown search method {method!r}, expected one of "
                          f"{', '.join(_METHODS)}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise SearchError(f"{where}search method {method!r} does not take option(s) "
                          f"{', '.join(unknown)}; it takes: {allowed}")
    counts = as_counts(hist, name)
    b = counts.size
    if b % spec.bins_multiple:
        raise SearchError(f"{where}{method} needs a bin count that is a multiple of "
                          f"{spec.bins_multiple}, found {b} bins")
    w, r = resolve_width(b, bin_width, hist_max, name)
    if w == 0.0 or not counts.any():
        return fallback_result(method, spec.scale_divisor)
    if spec.takes_name:
        options["name"] = name
    return spec.func(counts, w, r, **options)


def get_search(method: str) -> Callable[..., SearchResult]:
    """The search as a callable ``f(hist, *, bin_width=None, hist_max=None, **options)``."""
    if method not in _METHODS:
        raise SearchError(f"unknown search method {method!r}, expected one of "
                          f"{', '.join(_METHODS)}")

    def search(hist: np.ndarray, *, bin_width: Optional[float] = None,
               hist_max: Optional[float] = None, **options) -> SearchResult:
        return run_search(method, hist, bin_width=bin_width, hist_max=hist_max, **options)

    search.__name__ = f"search_{method}"
    return search
