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
from trtkld.search.baselines import DEFAULT_PERCENTILE
from trtkld.search.quality import histogram_sqnr_db
from trtkld.search.registry import DEFAULT_BINS, auto_candidates
from trtkld.search.result import SearchResult, clipped_fraction

# The candidates and their tie order come from the registry (``auto_rank``).
AUTO_ORDER = tuple(record.name for record in auto_candidates())


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
    for record in auto_candidates():
        if b < record.bins_multiple or b % record.bins_multiple:
            continue              # bin count the method cannot use (ppq): it does not compete
        # Methods made for fewer bins than auto's see the exact pairwise rebin.
        if record.default_bins < DEFAULT_BINS["auto"]:
            c, cw = half, w_half
        else:
            c, cw = counts, w
        options = {}
        if record.takes_name:
            options["name"] = name
        if "percentile" in record.option_names:
            options["percentile"] = percentile
        results[record.name] = record.search(c, cw, r, **options)
    scores = {m: histogram_sqnr_db(counts, w, res.amax, float(res.scale))
              for m, res in results.items()}
    best = pick_best(scores)
    win = results[best]
    return SearchResult(method="auto", amax=win.amax, scale=win.scale, index=win.index,
                        kl=win.kl, clipped_fraction=clipped_fraction(counts, w, win.amax),
                        candidates=win.candidates, divergences=win.divergences,
                        fallback=win.fallback, chosen_method=best, scores=scores)
