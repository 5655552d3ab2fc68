"""The per-tensor summary table printed at the end of `trtkld calibrate`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

# Methods whose thresholds differ by more than this factor on a tensor are flagged: one of
# them clips hard or wastes most of the INT8 range, and the tensor deserves a look.
DISAGREEMENT_RATIO = 2.0


# ``max`` always keeps the whole range, so it is left out of the disagreement measure: it would
# flag every tensor with a long tail.
_NOT_COMPARED = {"max"}


def disagreement(amaxes: Mapping[str, float]) -> float:
    """Largest over smallest threshold among the searching methods (1.0 for fewer than two)."""
    values = [
        v for m, v in amaxes.items() if m not in _NOT_COMPARED and v > 0 and math.isfinite(v)
    ]
    if len(values) < 2:
        return 1.0
    return max(values) / min(values)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}"


def format_summary(histograms, outcomes: Mapping[str, object], *, limit: Optional[int] = 40) -> str:
    """A text table, one row per tensor (the ``limit`` most interesting rows, or all with None).

    Columns: name, absmax, then the first method's chosen amax, scale, clipped % and KL, the
    other methods' amax, a flag ``DISAGREE`` when the searching methods' thresholds differ by
    more than ``DISAGREEMENT_RATIO``, and a note for NaN/Inf counts, fallbacks and ``auto``'s
    pick. When rows are limited, the most disagreeing (then most clipped) tensors are shown.
    """
    methods = list(outcomes)
    rows = []
    for name, hist in histograms.items():
        results = {m: outcomes[m].results.get(name) for m in methods}
        results = {m: r for m, r in results.items() if r is not None}
        if not results:
            continue
        ratio = disagreement({m: r.amax for m, r in results.items()})
        clipped = max(r.clipped_fraction for r in results.values())
        notes = []
        nonfinite = hist.num_nan + hist.num_posinf + hist.num_neginf
        if nonfinite:
            notes.append(f"{nonfinite} NaN/Inf")
        fallbacks = {r.fallback for r in results.values() if r.fallback}
        notes.extend(sorted(fallbacks))
        chosen = {r.chosen_method for r in results.values() if getattr(r, "chosen_method", None)}
        if chosen:
            notes.append("auto->" + "/".join(sorted(chosen)))
        flag = "DISAGREE" if ratio > DISAGREEMENT_RATIO else ""
        rows.append((ratio, clipped, name, hist.absmax, results, flag, "; ".join(notes)))

    shown = rows
    if limit is not None and len(rows) > limit:
        shown = sorted(rows, key=lambda r: (-r[0], -r[1], r[2]))[:limit]
    header = ["tensor", "absmax"]
    first, others = methods[0], methods[1:]
    header += [f"{first} amax", "scale", "clip%", "KL"] + [f"{m} amax" for m in others]
    # The flag marks disagreement between searching methods: with one of them it cannot be set.
    show_flag = len([m for m in methods if m not in _NOT_COMPARED]) > 1
    header += (["flag"] if show_flag else []) + ["note"]
    table = [header]
    for _ratio, _clipped, name, absmax, results, flag, note in shown:
        row = [name if len(name) <= 48 else "…" + name[-47:], _fmt(absmax)]
        r = results.get(first)
        if r is None:
            row += ["-", "-", "-", "-"]
        else:
            row += [
                _fmt(r.amax),
                f"{float(r.scale):.4g}",
                f"{100 * r.clipped_fraction:.3f}",
                _fmt(r.kl),
            ]
        row += [_fmt(results[m].amax) if m in results else "-" for m in others]
        row += ([flag] if show_flag else []) + [note]
        table.append(row)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    flagged = sum(1 for r in rows if r[5])
    footer = f"{len(rows)} tensors"
    if len(shown) < len(rows):
        footer += f" ({len(shown)} shown: most disagreeing / clipped first; --table full shows all)"
    if show_flag:
        footer += (f"; flag DISAGREE: {flagged} tensor(s) whose methods' thresholds differ by "
                   f"more than {DISAGREEMENT_RATIO:g}x")
    lines.append(footer)
    return "\n".join(lines)


_GUARD_KINDS = {"clipped": "whose threshold clips too much",
                "sqnr_drop": "losing too much SQNR against max"}


def format_guard_summary(outcomes: Mapping[str, object]) -> str:
    """The guard's findings in one line per method ('' when there are none): how many tensors
    were flagged and for which reason; :func:`format_guard` lists them."""
    lines = []
    for method, outcome in outcomes.items():
        findings = getattr(outcome, "findings", {})
        if not findings:
            continue
        kinds: dict[str, int] = {}
        for found in findings.values():
            for kind in {f.kind for f in found}:
                kinds[kind] = kinds.get(kind, 0) + 1
        reasons = ", ".join(f"{n} {_GUARD_KINDS.get(k, k)}" for k, n in sorted(kinds.items()))
        lines.append(f"guard: {method}: {len(findings)} tensor(s) flagged ({reasons}); "
                     "-v lists them (limits: --guard-clipped, --guard-sqnr-drop)")
    return "\n".join(lines)


def format_guard(outcomes: Mapping[str, object], *, per_method: int = 10) -> str:
    """The guard's findings as text ('' when there are none): per method, the flagged tensors
    (the ``per_method`` worst shown) and what each broke."""
    blocks = []
    for method, outcome in outcomes.items():
        findings = getattr(outcome, "findings", {})
        if not findings:
            continue
        ranked = sorted(findings.items(), key=lambda kv: -max(f.value for f in kv[1]))
        lines = [f"guard: {method}: {len(findings)} tensor(s) flagged"]
        for _name, found in ranked[:per_method]:
            lines.extend(f"  {f.message}" for f in found)
        if len(ranked) > per_method:
            lines.append(f"  ... and {len(ranked) - per_method} more")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
