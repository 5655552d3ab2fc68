"""``auto``: run every search on a tensor and keep the one with the best histogram SQNR.

Input: a histogram at ppq's resolution (``DEFAULT_BINS["auto"] = 4096``). ppq runs on it as
is; the 2048-bin methods run on it summed in adjacent pairs, which equals collecting at half
the bin count exactly (docs/architecture.md, binning rule). An odd bin count is used as is for
every method; a bin count ppq rejects (not a multiple of 128) leaves ppq out.

Every result is scored by ``histogram_sqnr_db`` on the full-resolution input histogram with
its own ``amax`` and ``scale``. The highest score wins; ties go to the earliest method in
``AUTO_ORDER``. The result is the winner's (amax, scale, index in the winner's own
resolution, kl) with ``method="auto"``, ``chosen_method`` and ``scores`` (method -> dB) set.
"""
from __future__ import annotations

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.baselines import DEFAULT_PERCENTILE, search_max, search_percentile
from trtkld.search.kl_nvidia import search_modelopt, search_nvidia
from trtkld.search.kl_ppq import search_ppq
from trtkld.search.mse import search_mse
from trtkld.search.quality import histogram_sqnr_db
from trtkld.search.result import SearchResult, clipped_fraction

AUTO_ORDER = ("max", "percentile", "ppq", "nvidia", "modelopt", "mse")


def rebin_pairs(counts: np.ndarray) -> np.ndarray:
    """Sum adjacent bin pairs: ``(B,)`` -> ``(B // 2,)``; ``B`` must be even."""
    return counts.reshape(-1, 2).sum(axis=1)


def pick_best(scores: dict[str, float]) -> str:
    """Method with the highest score; a tie goes to the earliest in ``AUTO_ORDER``."""
    best = None
    for method in AUTO_ORDER:     # strict '>' keeps the earliest method on a tie
        if method in scores and (best is None or scores[method] > scores[best]):
            best = method
    if best is None:
        raise SearchError(f"auto: no method could be scored, found scores {scores}")
    return best


def search_auto(counts: np.ndarray, w: float, r: float,
                percentile: float = DEFAULT_PERCENTILE, name: str | None = None
                ) -> SearchResult:
    """Best-SQNR threshold among ``AUTO_ORDER`` (see module docstring)."""
    b = counts.size
    if b % 2 == 0:
        half, w_half = rebin_pairs(counts), 2.0 * w
    else:
        half, w_half = counts, w
    results: dict[str, SearchResult] = {}
    for method in AUTO_ORDER:
        if method == "ppq":
            try:
                results[method] = search_ppq(counts, w, r, name=name)
            except SearchError:
                continue          # bin count ppq cannot use: ppq simply does not compete
        elif method == "percentile":
            results[method] = search_percentile(half, w_half, r, percentile=percentile,
                                                name=name)
        elif method in ("nvidia", "modelopt"):
            func = search_nvidia if method == "nvidia" else search_modelopt
            results[method] = func(half, w_half, r, name=name)
        else:
            func = search_max if method == "max" else search_mse
            results[method] = func(half, w_half, r)
    scores = {m: histogram_sqnr_db(counts, w, res.amax, float(res.scale))
              for m, res in results.items()}
    best = pick_best(scores)
    win = results[best]
    return SearchResult(method="auto", amax=win.amax, scale=win.scale, index=win.index,
                        kl=win.kl, clipped_fraction=clipped_fraction(counts, w, win.amax),
                        candidates=win.candidates, divergences=win.divergences,
                        fallback=win.fallback, chosen_method=best, scores=scores)
