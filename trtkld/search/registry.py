"""The method registry: one frozen record per threshold search, read by everything else.

The CLI's ``--method`` choices and help, the options each method takes (``--percentile``),
method-name validation, the histogram resolution each method needs (``DEFAULT_BINS``),
``auto``'s candidates and their tie order, and the report's legend (colours, KL curve offsets)
all come from here. Adding a method means one search module and one record in ``_RECORDS``.

A search function has the signature ``f(counts, w, r, **options) -> SearchResult`` with
``counts`` an ``int64 (B,)`` histogram of |x|, ``w`` the bin width and ``r = B * w`` (activation
units); ``run_search`` has already validated the histogram and handled the all-zero case.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from trtkld.errors import SearchError
from trtkld.search.baselines import DEFAULT_PERCENTILE, search_max, search_percentile
from trtkld.search.kl_nvidia import search_modelopt, search_nvidia
from trtkld.search.kl_ppq import QB, search_ppq
from trtkld.search.mse import search_mse
from trtkld.search.result import SearchResult


def _check_percentile(value: float) -> Optional[str]:
    if not (0.0 < value <= 100.0) or math.isnan(value):
        return f"percentile must be in (0, 100], found {value}"
    return None


@dataclass(frozen=True)
class MethodOption:
    """A keyword option a search takes; the CLI turns it into ``--<name>`` once for all."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Optional[Callable[[Any], Optional[str]]] = None   # returns why a value is wrong

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not acceptable, or None."""
        return self.check(value) if self.check is not None else None


PERCENTILE_OPTION = MethodOption(
    "percentile", float, DEFAULT_PERCENTILE,
    "percentile of |x| kept by the 'percentile' method (default: %(default)s)",
    _check_percentile,
)


@dataclass(frozen=True)
class MethodRecord:
    """Everything trtkld knows about one threshold search.

    ``default_bins``: histogram bins the search runs on (histograms with more bins are
    rebinned exactly first). ``scale_divisor``: ``scale = amax / scale_divisor`` (the all-zero
    fallback uses ``amax = 1``). ``bins_multiple``: the bin count must be a multiple of it.
    ``is_kl``: a KL-divergence search; ``candidate_offset``: its candidate ``c``'s threshold is
    ``(c + offset) * w`` (the report draws KL curves with it; None when there is no curve).
    ``auto_rank``: position among ``auto``'s candidates (ties go to the lower rank), None if
    auto does not try it. ``in_report``: compared by ``trtkld report`` by default.
    """

    name: str
    doc: str
    search: Callable[..., SearchResult]
    default_bins: int
    scale_divisor: float = 127.0
    options: tuple[MethodOption, ...] = ()
    takes_name: bool = False
    bins_multiple: int = 1
    is_kl: bool = False
    candidate_offset: Optional[float] = None
    auto_rank: Optional[int] = None
    colour: str = "#7f7f7f"
    in_report: bool = True

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


def _search_auto(counts, w, r, **options) -> SearchResult:
    # auto reads this registry for its candidates, so it is imported when first used.
    from trtkld.search.auto import search_auto

    return search_auto(counts, w, r, **options)


_RECORDS = (
    MethodRecord("ppq", "PPQ's KL observer; scale = T / 128 (bins: a multiple of 128)",
                 search_ppq, 4096, scale_divisor=float(QB), takes_name=True, bins_multiple=QB,
                 is_kl=True, candidate_offset=0.0, auto_rank=2, colour="#d62728"),
    MethodRecord("nvidia", "GTC 2017 KL procedure (TensorRT's entropy calibration), "
                 "threshold (m + 0.5) * w", search_nvidia, 2048, takes_name=True, is_kl=True,
                 candidate_offset=0.5, auto_rank=3, colour="#2ca02c"),
    MethodRecord("modelopt", "NVIDIA ModelOpt / pytorch-quantization entropy calibration, "
                 "amax = i * w", search_modelopt, 2048, takes_name=True, is_kl=True,
                 candidate_offset=0.0, auto_rank=4, colour="#1f77b4"),
    MethodRecord("max", "amax = the calibration set's absmax", search_max, 2048, auto_rank=0,
                 colour="#7f7f7f"),
    MethodRecord("percentile", "amax at the bin edge keeping --percentile of |x|",
                 search_percentile, 2048, options=(PERCENTILE_OPTION,), takes_name=True,
                 auto_rank=1, colour="#9467bd"),
    MethodRecord("mse", "minimum squared INT8 error over the bin edges", search_mse, 2048,
                 auto_rank=5, colour="#8c564b", in_report=False),
    MethodRecord("auto", "the rule most faithful at the model output on held-out calibration "
                 "data (trtkld.calibration.auto); from saved histograms: every method above, "
                 "best histogram SQNR per tensor wins",
                 _search_auto, 4096, options=(PERCENTILE_OPTION,), takes_name=True,
                 colour="#ff7f0e", in_report=False),
)

METHODS: Mapping[str, MethodRecord] = {r.name: r for r in _RECORDS}

# Bins each method's histograms are searched at (kept as a plain dict: a public name since 0.1).
DEFAULT_BINS: dict[str, int] = {r.name: r.default_bins for r in _RECORDS}


def method_names() -> list[str]:
    """Every method, in the fixed registry order: ppq, nvidia, modelopt, max, percentile, mse,
    auto."""
    return list(METHODS)


def get_method(name: str, *, where: str = "") -> MethodRecord:
    """The record of ``name``; SearchError naming the choices when there is none.

    ``where`` prefixes the message (e.g. ``"tensor 'x': "``).
    """
    record = METHODS.get(name)
    if record is None:
        raise SearchError(f"{where}unknown search method {name!r}, expected one of "
                          f"{', '.join(METHODS)}")
    return record


def check_methods(names: Iterable[str], *, what: str = "method") -> list[str]:
    """``names`` as a list after checking every one is registered (one SearchError for all)."""
    names = list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SearchError(f"unknown {what}(s) {unknown}; choose from {', '.join(METHODS)}")
    return names


def all_options() -> dict[str, MethodOption]:
    """Every option any method takes, by name (one ``--<name>`` CLI flag each)."""
    found: dict[str, MethodOption] = {}
    for record in _RECORDS:
        for option in record.options:
            found.setdefault(option.name, option)
    return found


def methods_taking(option: str) -> list[str]:
    """Methods that take keyword option ``option``, in registry order."""
    return [r.name for r in _RECORDS if option in r.option_names]


def options_for_methods(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"percentile": 99.9}`` -> ``{"percentile": {"percentile": 99.9}, "auto": {...}}``:
    each given option (None = not given) routed to every method that takes it, after its check.
    """
    routed: dict[str, dict[str, Any]] = {}
    known = all_options()
    for name, value in values.items():
        if value is None:
            continue
        option = known.get(name)
        if option is None:
            raise SearchError(f"no search method takes option {name!r}; options: "
                              f"{', '.join(known) or 'none'}")
        problem = option.problem(value)
        if problem:
            raise SearchError(problem)
        for method in methods_taking(name):
            routed.setdefault(method, {})[name] = value
    return routed


def auto_candidates() -> list[MethodRecord]:
    """The methods ``auto`` tries, in tie-break order (lowest ``auto_rank`` first)."""
    ranked = [r for r in _RECORDS if r.auto_rank is not None]
    return sorted(ranked, key=lambda r: r.auto_rank)
