"""Per-tensor summary rows of a report: one row per tensor, one cell group per method.

Pure data: no matplotlib, no HTML. The page renderer and the tests both read these rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

# `max` clips nothing by construction, so it "disagrees" with every clipping search on any
# tensor with a tail; counting it would flag nearly every tensor and hide the interesting ones.
SPREAD_EXCLUDED_METHODS = frozenset({"max"})

DEFAULT_DISAGREE_RATIO = 2.0


@dataclass(frozen=True)
class MethodCell:
    """One method's result for one tensor, as shown in the summary table.

    ``amax`` is in activation units, ``scale`` is the TensorRT cache value, ``clipped_percent``
    is the share of histogram mass above ``amax`` in percent, ``kl`` is NaN for non-KL methods,
    ``sqnr_db`` is the per-tensor SQNR from an eval JSON (None when not available).
    """

    method: str
    amax: float
    scale: float
    clipped_percent: float
    kl: float
    fallback: Optional[str] = None
    chosen_method: Optional[str] = None
    sqnr_db: Optional[float] = None


@dataclass(frozen=True)
class TensorRow:
    """Summary of one tensor across every method of the report.

    ``index`` is the tensor's position in model order (0-based). ``spread`` is the ratio of the
    largest to the smallest amax over the methods that take part in the disagreement measure
    (see :func:`amax_spread`); 1.0 when fewer than two of them have a real (non-fallback) result.
    """

    index: int
    name: str
    absmax: float
    num_values: int
    num_nan: int
    num_posinf: int
    num_neginf: int
    cells: tuple[MethodCell, ...]
    spread: float
    disagree: bool
    all_zero: bool
    plot_file: Optional[str] = field(default=None)


def amax_spread(cells: Sequence[MethodCell]) -> float:
    """Ratio max(amax) / min(amax) over the cells that measure disagreement.

    Cells of methods in :data:`SPREAD_EXCLUDED_METHODS` and cells whose result is a fallback
    (e.g. an all-zero histogram, where every method returns the same placeholder) are left out.
    Returns 1.0 when fewer than two cells remain. Amax values are positive by the search
    contract; a non-positive or non-finite one gives ``inf`` so that it is flagged, not hidden.
    """
    values = [
        c.amax for c in cells if c.method not in SPREAD_EXCLUDED_METHODS and c.fallback is None
    ]
    if len(values) < 2:
        return 1.0
    low, high = min(values), max(values)
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0:
        return math.inf
    return high / low


def _int_attr(obj: Any, name: str) -> int:
    value = getattr(obj, name, 0)
    return int(value) if value is not None else 0


def build_rows(
    hists: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Any]],
    *,
    per_tensor_sqnr: Optional[Mapping[str, Mapping[str, float]]] = None,
    disagree_ratio: float = DEFAULT_DISAGREE_RATIO,
) -> list[TensorRow]:
    """Build one :class:`TensorRow` per histogram, in the histograms' (model) order.

    hists: name -> TensorHistogram. results: method -> {name -> SearchResult}; a tensor missing
    from a method's results gets no cell for that method (the table shows a dash).
    per_tensor_sqnr: method -> {name -> SQNR dB}, from an eval JSON.
    """
    sqnr = per_tensor_sqnr or {}
    rows: list[TensorRow] = []
    for index, (name, hist) in enumerate(hists.items()):
        cells = []
        for method, by_name in results.items():
            result = by_name.get(name)
            if result is None:
                continue
            tensor_sqnr = sqnr.get(method, {}).get(name)
            cells.append(
                MethodCell(
                    method=method,
                    amax=float(result.amax),
                    scale=float(result.scale),
                    clipped_percent=100.0 * float(result.clipped_fraction),
                    kl=float(result.kl),
                    fallback=getattr(result, "fallback", None),
                    chosen_method=getattr(result, "chosen_method", None),
                    sqnr_db=None if tensor_sqnr is None else float(tensor_sqnr),
                )
            )
        spread = amax_spread(cells)
        rows.append(
            TensorRow(
                index=index,
                name=name,
                absmax=float(hist.absmax),
                num_values=_int_attr(hist, "num_values"),
                num_nan=_int_attr(hist, "num_nan"),
                num_posinf=_int_attr(hist, "num_posinf"),
                num_neginf=_int_attr(hist, "num_neginf"),
                cells=tuple(cells),
                spread=spread,
                disagree=spread > disagree_ratio,
                all_zero=float(hist.hist_max) == 0.0,
            )
        )
    return rows


def plot_order(rows: Sequence[TensorRow], max_plots: Optional[int]) -> list[TensorRow]:
    """The rows that get a plot: worst disagreement first (ties in model order), at most
    ``max_plots`` of them (all when None)."""
    ordered = sorted(rows, key=lambda r: (-r.spread, r.index))
    if max_plots is not None:
        ordered = ordered[: max(0, max_plots)]
    return ordered
