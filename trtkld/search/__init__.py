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

Each method is one record in :mod:`trtkld.search.registry`.

Every scale is a finite float32 > 0; every method but ppq uses ``scale = amax / 127``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.batch import SearchRequest, run_searches
from trtkld.search.quality import GuardFinding, guard_findings, histogram_sqnr_db
from trtkld.search.registry import (
    DEFAULT_BINS,
    METHODS,
    MethodOption,
    MethodRecord,
    get_method,
    method_names,
)
from trtkld.search.result import SearchResult, as_counts, fallback_result, resolve_width

__all__ = ["DEFAULT_BINS", "METHODS", "GuardFinding", "MethodOption", "MethodRecord",
           "SearchRequest", "SearchResult", "available_methods", "get_method", "guard_findings",
           "histogram_sqnr_db", "run_search", "run_searches"]


def available_methods() -> list[str]:
    """Method names in a fixed order: ppq, nvidia, modelopt, max, percentile, mse, auto."""
    return method_names()


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
    where = f"tensor {name!r}: " if name else ""
    spec = get_method(method, where=where)
    unknown = sorted(set(options) - set(spec.option_names))
    if unknown:
        allowed = ", ".join(spec.option_names) or "none"
        raise SearchError(f"{where}search method {method!r} does not take option(s) "
                          f"{', '.join(unknown)}; it takes: {allowed}")
    for option in spec.options:          # each option's check lives in its registry record
        if option.name in options:
            problem = option.problem(options[option.name])
            if problem:
                raise SearchError(f"{where}{problem}")
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
    return spec.search(counts, w, r, **options)
