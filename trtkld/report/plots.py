"""Per-tensor figure: |x| histogram with each method's threshold, and the KL-versus-candidate
curves of the KL searches.

:func:`tensor_plot_data` is pure (arrays in, arrays out) so tests can check exactly what is
drawn; :func:`render_tensor_plot` turns it into a PNG. matplotlib is imported lazily inside the
renderer so that the rest of trtkld never needs it.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from trtkld.search.registry import METHODS

# The KL searches, and the threshold of candidate c in bin widths (docs/kld-spec.md): ppq
# T = r * w, nvidia (m + 0.5) * w, modelopt i * w. Puts every curve on one activation-unit axis.
CANDIDATE_OFFSETS = {r.name: r.candidate_offset for r in METHODS.values()
                     if r.candidate_offset is not None}

# A 4096-bin histogram drawn at 72 dpi has several bins per pixel; summing adjacent bins keeps
# the PNG small without changing what the eye can see.
MAX_DISPLAY_BINS = 512

# Fixed colours per method (from the registry) so a method looks the same in every figure.
_METHOD_COLOURS = {r.name: r.colour for r in METHODS.values()}
_FALLBACK_COLOURS = ("#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939")


def method_colour(method: str, position: int) -> str:
    """Colour of a method's line; unknown methods get a fixed colour by their position."""
    return _METHOD_COLOURS.get(method, _FALLBACK_COLOURS[position % len(_FALLBACK_COLOURS)])


@dataclass(frozen=True)
class Threshold:
    """A vertical line: ``amax`` in activation units; ``fallback`` explains a placeholder."""

    method: str
    amax: float
    fallback: Optional[str] = None


@dataclass(frozen=True)
class KLCurve:
    """Objective of one KL search per candidate.

    ``x``: (K,) thresholds in activation units when ``x_is_amax`` else candidate indices;
    ``y``: (K,) objective, NaN where the search found it infinite; ``chosen_x``/``chosen_y``:
    the winner.
    """

    method: str
    x: np.ndarray
    y: np.ndarray
    chosen_x: float
    chosen_y: float
    x_is_amax: bool


@dataclass(frozen=True)
class TensorPlotData:
    """Everything drawn for one tensor.

    ``edges``: (N+1,) display-bin edges in activation units; ``counts``: (N,) int64 counts per
    display bin (adjacent source bins summed, total unchanged); both empty when the tensor had no
    non-zero finite value. ``thresholds`` in method order; ``curves`` only for the KL
    searches (:data:`CANDIDATE_OFFSETS`) that returned candidates.
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray
    thresholds: tuple[Threshold, ...]
    curves: tuple[KLCurve, ...]
    num_nan: int
    num_posinf: int
    num_neginf: int


def display_histogram(
    counts: np.ndarray, hist_max: float, max_bins: int = MAX_DISPLAY_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Sum adjacent bins so that at most ``max_bins`` remain.

    counts: (B,) int64 over [0, hist_max]. Returns (edges (N+1,), counts (N,)); the last edge is
    ``hist_max`` even when B is not a multiple of the group size (the short last group is padded
    with zeros before summing).
    """
    counts = np.asarray(counts, dtype=np.int64)
    num_bins = counts.shape[0]
    group = max(1, math.ceil(num_bins / max_bins))
    padded = np.zeros(math.ceil(num_bins / group) * group, dtype=np.int64)
    padded[:num_bins] = counts
    grouped = padded.reshape(-1, group).sum(axis=1)
    width = hist_max / num_bins
    edges = np.arange(grouped.shape[0] + 1, dtype=np.float64) * (width * group)
    edges[-1] = hist_max
    return edges, grouped


def _kl_curve(
    method: str, result: Any, hist_max: float, *, force_indices: bool = False
) -> Optional[KLCurve]:
    # `auto` reports the search it delegated to; its candidates are that search's.
    base = getattr(result, "chosen_method", None) or method
    if base not in CANDIDATE_OFFSETS:
        # Only KL objectives share the plot; mse's squared error is another quantity.
        return None
    candidates = getattr(result, "candidates", None)
    divergences = getattr(result, "divergences", None)
    if candidates is None or divergences is None or len(candidates) == 0:
        return None
    cand = np.asarray(candidates, dtype=np.float64)
    y = np.asarray(divergences, dtype=np.float64).copy()
    if cand.shape != y.shape:
        return None
    y[~np.isfinite(y)] = np.nan
    offset = CANDIDATE_OFFSETS[base]
    chosen_index = float(result.index)
    hits = np.flatnonzero(cand == chosen_index)
    chosen_y = float(y[hits[0]]) if hits.size else float(result.kl)
    fallback = getattr(result, "fallback", None)
    if not force_indices and fallback is None and chosen_index + offset > 0:
        # The winner's threshold pins the bin width the search ran at (searches may rebin).
        width = float(result.amax) / (chosen_index + offset)
        x = (cand + offset) * width
        # A mapping that lands outside the histogram means the index convention is not the
        # one assumed; show candidate indices rather than a wrong axis.
        if np.all(x >= 0.0) and float(x.max()) <= hist_max * (1.0 + 1e-6) + 1e-12:
            return KLCurve(method, x, y, float(result.amax), chosen_y, True)
    return KLCurve(method, cand, y, chosen_index, chosen_y, False)


def tensor_plot_data(
    hist: Any, results: Mapping[str, Any], *, max_display_bins: int = MAX_DISPLAY_BINS
) -> TensorPlotData:
    """Data for one tensor's figure.

    hist: a TensorHistogram (counts, hist_max, num_nan, num_posinf, num_neginf).
    results: method -> SearchResult for this tensor, in the order the legend shows them.
    """
    hist_max = float(hist.hist_max)
    counts = np.asarray(hist.counts, dtype=np.int64)
    if hist_max > 0.0 and counts.size and int(counts.sum()) > 0:
        edges, shown = display_histogram(counts, hist_max, max_display_bins)
    else:
        edges, shown = np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    thresholds = tuple(
        Threshold(method, float(r.amax), getattr(r, "fallback", None))
        for method, r in results.items()
    )
    curves = []
    for method, r in results.items():
        curve = _kl_curve(method, r, hist_max)
        if curve is not None:
            curves.append(curve)
    if curves and not all(c.x_is_amax for c in curves):
        # One shared x axis: fall back to candidate indices for every curve.
        curves = [
            _kl_curve(c.method, results[c.method], hist_max, force_indices=True) for c in curves
        ]
    return TensorPlotData(
        name=hist.name if hasattr(hist, "name") else "",
        edges=edges,
        counts=shown,
        thresholds=thresholds,
        curves=tuple(curves),
        num_nan=int(getattr(hist, "num_nan", 0) or 0),
        num_posinf=int(getattr(hist, "num_posinf", 0) or 0),
        num_neginf=int(getattr(hist, "num_neginf", 0) or 0),
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plot_file_name(index: int, name: str, max_name_chars: int = 60) -> str:
    """Deterministic, file-system-safe PNG name: ``0007_conv1_output_0.png``.

    The model-order index keeps names unique even when two tensor names sanitise alike.
    """
    safe = _UNSAFE.sub("_", name).strip("._")[:max_name_chars] or "tensor"
    return f"{index:04d}_{safe}.png"


def _plain(text: str) -> str:
    """Text matplotlib shows as written: a pair of ``$`` would otherwise start mathtext, and a
    tensor name like ``a$\\frac$b`` would make the render fail."""
    return text.replace("$", r"\$")


def _short(name: str, limit: int = 90) -> str:
    return name if len(name) <= limit else name[: limit // 2 - 1] + "..." + name[-(limit // 2 - 2):]


def render_tensor_plot(
    data: TensorPlotData, path: str | os.PathLike, *, dpi: int = 72, width_in: float = 11.0,
    height_in: float = 3.2,
) -> None:
    """Write one PNG (histogram left, KL curves right) for ``data`` to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure on an explicit Agg canvas, without pyplot: no global backend switch for the
    # caller, nothing registered to close, safe to call many times.
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_h, ax_k = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colours = {t.method: method_colour(t.method, i) for i, t in enumerate(data.thresholds)}

    if data.counts.size:
        positive = np.where(data.counts > 0, data.counts, np.nan).astype(np.float64)
        ax_h.stairs(positive, data.edges, color="#333333", linewidth=0.8, label="_nolegend_")
        ax_h.set_yscale("log")
        right = float(data.edges[-1])
    else:
        ax_h.text(0.5, 0.5, "no non-zero finite values\n(all-zero tensor: fallback thresholds)",
                  ha="center", va="center", transform=ax_h.transAxes, fontsize=9)
        right = 0.0
    for t in data.thresholds:
        label = _plain(f"{t.method} {t.amax:.4g}" + (" (fallback)" if t.fallback else ""))
        ax_h.axvline(t.amax, color=colours[t.method], linewidth=1.2, linestyle="--", label=label)
        right = max(right, t.amax)
    ax_h.set_xlim(0.0, right * 1.03 if right > 0 else 1.0)
    ax_h.set_xlabel("|x|")
    ax_h.set_ylabel("count (log)" if data.counts.size else "count")
    bad = []
    if data.num_nan:
        bad.append(f"NaN {data.num_nan}")
    if data.num_posinf or data.num_neginf:
        bad.append(f"Inf +{data.num_posinf}/-{data.num_neginf}")
    title = _plain(_short(data.name)) + (f"   [{', '.join(bad)}]" if bad else "")
    ax_h.set_title(title, fontsize=9, loc="left")
    if data.thresholds:
        ax_h.legend(fontsize=7, loc="upper right", framealpha=0.8)

    if data.curves:
        for c in data.curves:
            colour = colours.get(c.method, "#000000")
            # Markers too: with sparse tails most KL candidates are infinite (NaN here), and a
            # finite candidate between two infinite ones would be invisible as a line alone.
            ax_k.plot(c.x, c.y, color=colour, linewidth=1.0, marker=".", markersize=2.5,
                      label=_plain(c.method))
            if math.isfinite(c.chosen_y):
                ax_k.plot([c.chosen_x], [c.chosen_y], marker="o", color=colour, markersize=5)
        finite = np.concatenate([c.y[np.isfinite(c.y)] for c in data.curves])
        if finite.size and float(finite.min()) > 0.0:
            ax_k.set_yscale("log")
        ax_k.set_xlabel("threshold |x|" if data.curves[0].x_is_amax else "candidate index")
        ax_k.set_ylabel("KL (each search's own log base)", fontsize=8)
        ax_k.set_title("KL vs candidate (dot: chosen)", fontsize=9, loc="left")
        ax_k.legend(fontsize=7, loc="upper right", framealpha=0.8)
    else:
        ax_k.text(0.5, 0.5, "no KL search curve", ha="center", va="center",
                  transform=ax_k.transAxes, fontsize=9)
        ax_k.set_xticks([])
        ax_k.set_yticks([])
    for ax in (ax_h, ax_k):
        ax.tick_params(labelsize=7)
    # Fixed margins instead of tight_layout(): the layout pass measured every tick label again
    # and took about half of the render time; the figure size never changes, so neither do these.
    fig.subplots_adjust(left=0.065, right=0.985, bottom=0.16, top=0.9, wspace=0.2)
    # No "Software" text chunk: identical inputs give byte-identical PNGs across runs.
    fig.savefig(os.fspath(path), format="png", dpi=dpi, metadata={"Software": None})
