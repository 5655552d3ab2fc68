"""The report's HTML: one self-contained page (inline CSS and script, relative image links).

Every piece of text from the model or the user goes through :func:`esc`; tensor names contain
``/``, ``:``, ``<`` and worse. The inline script only reads the page: once everything has loaded it
records how many images decoded and how many summary rows exist on ``<body>`` as ``data-*``
attributes, which the browser test reads back through ``--dump-dom``.
"""
from __future__ import annotations

import html
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Optional

from trtkld.report.evaljson import EvalTable, format_metric
from trtkld.report.summary import SPREAD_EXCLUDED_METHODS, TensorRow

DASH = "\u2013"

_CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.name { text-align: left; max-width: 28em; overflow: hidden; text-overflow: ellipsis; }
tr.disagree td { background: #fff3cd; } tr.zero td { color: #888; }
td.bad { color: #b00; font-weight: bold; } td.fb { color: #888; font-style: italic; }
th.m { border-left: 2px solid #999; } td.m { border-left: 2px solid #999; }
figure { margin: 1em 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.meta td, .meta th { text-align: left; }
#fidelity tr.best td { font-weight: bold; background: #e6f4ea; }
#fidelity tr.destructive td { color: #b00; }
"""

# Runs after every image has loaded or failed (window "load"); records what decoded.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var b = document.body.dataset;
  b.imagesTotal = String(imgs.length);
  b.imagesDecoded = String(ok.length);
  b.summaryRows = String(document.querySelectorAll("#summary tbody tr").length);
  b.reportStatus = "loaded";
});
"""


# Header text for the metric keys `trtkld eval --json` writes; other keys show as they are.
_EVAL_LABELS = {
    "kind": "kind",
    "output_sqnr_db": "output SQNR dB",
    "cosine": "cosine",
    "top1_agreement": "top-1 agreement",
    "mean_tensor_sqnr_db": "mean tensor SQNR dB",
    "min_tensor_sqnr_db": "min tensor SQNR dB",
    "quantized_tensors": "quantized tensors",
    "destructive": "destructive",
    "destructive_reason": "why destructive",
}


def esc(text: object) -> str:
    """HTML-escape any value for element text and double-quoted attributes."""
    return html.escape(str(text), quote=True)


def _num(value: Optional[float], fmt: str = ".5g") -> str:
    if value is None:
        return DASH
    if math.isnan(value):
        return DASH
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def anchor_id(row: TensorRow) -> str:
    """Element id of a tensor's figure: ``t0007`` (model-order index, ASCII only)."""
    return f"t{row.index:04d}"


def _summary_table(rows: Sequence[TensorRow], methods: Sequence[str], with_sqnr: bool) -> str:
    per_method = ["amax", "scale", "clip %", "KL"] + (["SQNR dB"] if with_sqnr else [])
    out = ['<table id="summary">', "<thead>", "<tr>",
           '<th rowspan="2">#</th><th rowspan="2">tensor</th><th rowspan="2">absmax</th>',
           '<th rowspan="2">NaN</th><th rowspan="2">+Inf</th><th rowspan="2">-Inf</th>']
    for m in methods:
        out.append(f'<th class="m" colspan="{len(per_method)}">{esc(m)}</th>')
    out.append('<th rowspan="2" title="max/min amax over the methods, excluding '
               f'{esc(", ".join(sorted(SPREAD_EXCLUDED_METHODS)))} and fallbacks">'
               "spread</th></tr><tr>")
    for _ in methods:
        for i, col in enumerate(per_method):
            out.append(f'<th{" class=m" if i == 0 else ""}>{esc(col)}</th>')
    out.append("</tr></thead><tbody>")
    for row in rows:
        classes = []
        if row.disagree:
            classes.append("disagree")
        if row.all_zero:
            classes.append("zero")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        name = esc(row.name)
        if row.plot_file is not None:
            name_cell = f'<a href="#{anchor_id(row)}">{name}</a>'
        else:
            name_cell = name
        out.append(f"<tr{cls} data-tensor=\"{esc(row.name)}\">")
        out.append(f"<td>{row.index}</td>")
        out.append(f'<td class="name" title="{esc(row.name)}">{name_cell}</td>')
        out.append(f"<td>{_num(row.absmax)}</td>")
        for count in (row.num_nan, row.num_posinf, row.num_neginf):
            out.append(f'<td class="bad">{count}</td>' if count else "<td>0</td>")
        cells = {c.method: c for c in row.cells}
        for m in methods:
            c = cells.get(m)
            if c is None:
                empty = f"<td>{DASH}</td>" * (len(per_method) - 1)
                out.append(f'<td class="m">{DASH}</td>{empty}')
                continue
            fb = f' class="m fb" title="{esc(c.fallback)}"' if c.fallback else ' class="m"'
            out.append(f"<td{fb}>{_num(c.amax)}</td>")
            out.append(f"<td>{_num(c.scale, '.6g')}</td>")
            out.append(f"<td>{_num(c.clipped_percent, '.3f')}</td>")
            out.append(f"<td>{_num(c.kl, '.4g')}</td>")
            if with_sqnr:
                out.append(f"<td>{_num(c.sqnr_db, '.2f')}</td>")
        flag = " \u26a0" if row.disagree else ""
        out.append(f"<td>{_num(row.spread, '.3g')}{flag}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _eval_section(table: EvalTable) -> str:
    out = ["<h2>INT8 fidelity against FP32 (trtkld eval)</h2>",
           "<p>Bold: best output SQNR. Red: marked destructive by eval.</p>"]
    if table.meta:
        out.append('<table class="meta">')
        for key, value in table.meta.items():
            out.append(f"<tr><th>{esc(key)}</th><td>{esc(format_metric(value))}</td></tr>")
        out.append("</table><p></p>")
    best = table.meta.get("best_method")
    out.append('<table id="fidelity"><thead><tr><th>method</th>')
    out.extend(f"<th>{esc(_EVAL_LABELS.get(c, c))}</th>" for c in table.columns)
    out.append("</tr></thead><tbody>")
    for method, metrics in table.rows:
        classes = []
        if method == best:
            classes.append("best")
        if metrics.get("destructive") is True:
            classes.append("destructive")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        out.append(f'<tr{cls}><td class="name">{esc(method)}</td>')
        for c in table.columns:
            left = ' class="name"' if isinstance(metrics.get(c), str) else ""
            out.append(f"<td{left}>{esc(format_metric(metrics.get(c)))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _figures(plotted: Sequence[TensorRow], plot_dir: str, size: tuple[int, int]) -> str:
    out = []
    width, height = size
    for row in plotted:
        src = esc(urllib.parse.quote(f"{plot_dir}/{row.plot_file}"))
        out.append(
            f'<figure id="{anchor_id(row)}"><img src="{src}" width="{width}" height="{height}" '
            f'alt="{esc("histogram and KL curves of " + row.name)}">'
            f"<figcaption>#{row.index} {esc(row.name)} \u2014 spread {_num(row.spread, '.3g')}"
            "</figcaption></figure>"
        )
    return "\n".join(out)


def render_page(
    *,
    title: str,
    meta: Mapping[str, str],
    rows: Sequence[TensorRow],
    methods: Sequence[str],
    plotted: Sequence[TensorRow],
    plot_dir: str,
    image_size: tuple[int, int],
    eval_table: Optional[EvalTable] = None,
    disagree_ratio: float,
) -> str:
    """The whole page as a string.

    rows: every tensor, model order (the summary table). plotted: the rows that have a figure,
    in the order shown. image_size: (width, height) of every PNG in pixels.
    """
    with_sqnr = any(c.sqnr_db is not None for r in rows for c in r.cells)
    n_flag = sum(r.disagree for r in rows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        '<table class="meta">',
    ]
    for key, value in meta.items():
        parts.append(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>")
    parts.append("</table>")
    if eval_table is not None:
        parts.append(_eval_section(eval_table))
    parts.append(f"<h2>Thresholds per tensor ({len(rows)} tensors)</h2>")
    parts.append(
        f"<p>amax in activation units; scale is the TensorRT cache value; clip % is the share of "
        f"the |x| histogram above amax; KL is the winning candidate's divergence in the search's "
        f"own log base. Highlighted rows ({n_flag}): the largest and smallest amax differ by more "
        f"than {disagree_ratio:g}\u00d7 (spread; {esc(', '.join(sorted(SPREAD_EXCLUDED_METHODS)))}"
        f" and fallback results excluded). Grey italic amax: fallback (hover for the reason).</p>"
    )
    parts.append(_summary_table(rows, methods, with_sqnr))
    parts.append(f"<h2>Plots ({len(plotted)} of {len(rows)} tensors, largest spread first)</h2>")
    if len(plotted) < len(rows):
        parts.append("<p>Tensors without a plot were left out by --max-plots; the table above "
                     "lists every tensor.</p>")
    parts.append(_figures(plotted, plot_dir, image_size))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
