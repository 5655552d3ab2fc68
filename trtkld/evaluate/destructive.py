"""Which methods destroyed the model, and why (pure functions over measured numbers)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

DEFAULT_FLOOR_DB = 10.0   # below this the INT8 output is mostly noise
DEFAULT_MARGIN_DB = 10.0  # this far under the best method is a collapse, not a trade-off


def find_destructive(
    output_sqnr_db: Mapping[str, float],
    *,
    floor_db: float = DEFAULT_FLOOR_DB,
    margin_db: float = DEFAULT_MARGIN_DB,
) -> dict[str, str]:
    """Methods whose model-output SQNR collapsed, with the rule that fired.

    Args:
        output_sqnr_db: method -> model-output SQNR in dB (NaN = undefined, -inf = NaN/Inf output).
        floor_db: absolute floor; a method below it is destructive.
        margin_db: a method more than this many dB under the best finite SQNR is destructive.
    Returns:
        method -> reason, only for destructive methods, in input order.
    """
    # The margin is measured from the best finite SQNR: an output identical to FP32 (+inf)
    # must not make every merely excellent method "infinitely far" under the best.
    finite = [v for v in output_sqnr_db.values() if math.isfinite(v)]
    best = max(finite) if finite else math.nan
    out: dict[str, str] = {}
    for method, value in output_sqnr_db.items():
        if math.isnan(value):
            out[method] = "output SQNR undefined (no comparable output)"
        elif value < floor_db:
            out[method] = f"output SQNR {value:.1f} dB < {floor_db:g} dB floor"
        elif not math.isnan(best) and value < best - margin_db:
            out[method] = (
                f"output SQNR {value:.1f} dB is {best - value:.1f} dB under the best "
                f"({best:.1f} dB; limit {margin_db:g} dB)"
            )
    return out


def worst_tensors(
    tensor_sqnr_db: Mapping[str, float],
    clipped_fraction: Mapping[str, float],
    *,
    reference_sqnr_db: Optional[Mapping[str, float]] = None,
    count: int = 3,
) -> list[tuple[str, float, float, Optional[float]]]:
    """The tensors where a method loses most.

    Ranked by loss against ``reference_sqnr_db`` (the best method's per-tensor SQNR) when given,
    else by the lowest SQNR.  Returns (tensor, SQNR dB, clipped share, reference dB or None).
    """
    def loss(name: str) -> float:
        own = tensor_sqnr_db[name]
        if math.isnan(own):
            return -math.inf
        if reference_sqnr_db is not None and name in reference_sqnr_db:
            ref = reference_sqnr_db[name]
            if math.isnan(ref) or math.isinf(ref):
                return -math.inf
            return ref - own
        return -own

    ranked = sorted(tensor_sqnr_db, key=lambda n: (-loss(n), n))
    rows = []
    for name in ranked[:count]:
        ref = reference_sqnr_db.get(name) if reference_sqnr_db is not None else None
        rows.append((name, tensor_sqnr_db[name], clipped_fraction.get(name, 0.0), ref))
    return rows


def explain(
    method: str,
    reason: str,
    tensors: Sequence[tuple[str, float, float, Optional[float]]],
    guard_notes: Sequence[str] = (),
) -> str:
    """One paragraph: the rule that fired, the tensors that lost most, guard findings."""
    parts = [f"{method} is DESTRUCTIVE: {reason}."]
    if tensors:
        items = []
        for name, sqnr, clipped, ref in tensors:
            text = f"{name} ({sqnr:.1f} dB"
            if ref is not None and math.isfinite(ref):
                text += f" vs {ref:.1f} dB best"
            text += f", {100.0 * clipped:.3g}% of values clipped)"
            items.append(text)
        parts.append("Largest per-tensor losses: " + "; ".join(items) + ".")
    if guard_notes:
        parts.append("Guard: " + "; ".join(guard_notes) + ".")
    return " ".join(parts)
