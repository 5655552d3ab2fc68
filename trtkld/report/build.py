"""Assemble a report folder: ``index.html`` plus ``plots/*.png``.

The folder is self-contained (relative links only) so it can be zipped, served or opened from disk.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trtkld._io import atomic_write
from trtkld._version import __version__
from trtkld.errors import DataError
from trtkld.report.evaljson import EvalTable
from trtkld.report.page import render_page
from trtkld.report.plots import plot_file_name, render_tensor_plot, tensor_plot_data
from trtkld.report.summary import DEFAULT_DISAGREE_RATIO, TensorRow, build_rows, plot_order

PLOT_DIR = "plots"
# Written last into every report folder: marks it as trtkld's and lists the files trtkld wrote
# there, the only ones a later report into the same folder may replace or delete.
MANIFEST = ".trtkld-report.json"
DEFAULT_MAX_PLOTS = 200
DEFAULT_DPI = 72


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` wrote: ``index`` is the HTML file, ``plots`` the PNGs in page
    order, ``rows`` every tensor's summary row (model order)."""

    out_dir: Path
    index: Path
    plots: tuple[Path, ...]
    rows: tuple[TensorRow, ...]


def default_report_dir(path: str | os.PathLike) -> Path:
    """The report folder next to a cache, model or histogram file: ``MODEL.cache`` ->
    ``MODEL.report``; ``hists.npz`` -> ``hists.report``."""
    return Path(path).with_suffix(".report")


def previous_report_files(out: Path) -> list[str]:
    """The files (relative, ``/``-separated) an earlier report wrote into ``out``; [] for a
    missing or empty folder. DataError for a non-empty folder without a trtkld manifest, so a
    report never writes into (or deletes from) a folder it does not own."""
    if not out.is_dir() or not any(out.iterdir()):
        return []
    marker = out / MANIFEST
    if not marker.is_file():
        raise DataError(
            f"{out}: the folder is not empty and is not a trtkld report (no {MANIFEST}); "
            f"choose a new or empty folder for --out, so that no file of yours is replaced"
        )
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{marker}: unreadable report manifest ({exc})") from exc
    safe = []
    for rel in files:
        # only plain relative names inside the folder: a crafted manifest cannot reach out
        parts = Path(str(rel)).parts
        if parts and not Path(str(rel)).is_absolute() and ".." not in parts:
            safe.append("/".join(parts))
    return safe


def _png_size(path: Path) -> tuple[int, int]:
    # PNG signature (8 bytes), IHDR length+type (8 bytes), then big-endian width and height.
    with open(path, "rb") as f:
        head = f.read(24)
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def write_report(
    hists: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    eval_table: Optional[EvalTable] = None,
    max_plots: Optional[int] = DEFAULT_MAX_PLOTS,
    dpi: int = DEFAULT_DPI,
    disagree_ratio: float = DEFAULT_DISAGREE_RATIO,
    title: str = "trtkld calibration report",
    meta: Optional[Mapping[str, str]] = None,
) -> ReportSummary:
    """Write ``out_dir/index.html`` and ``out_dir/plots/NNNN_name.png``.

    hists: name -> TensorHistogram (a HistogramSet), model order. results: method ->
    {name -> SearchResult}, e.g. from ``pipeline.search_histograms`` per method. Tensors a method
    has no result for show a dash. eval_table: from :func:`trtkld.report.evaljson.load_eval`.
    max_plots: figures for at most this many tensors, largest amax spread first (None: all).

    The page and plots are built in a temporary sibling folder and then moved into place, so an
    interrupted run never leaves a half-written file. ``out_dir`` must be new, empty, or a
    previous report (it holds :data:`MANIFEST`); in a previous report only the files that report
    listed are replaced or deleted, never anything a user added.
    """
    if not hists:
        raise DataError("report: no tensors to report (the histogram set is empty)")
    if not results:
        raise DataError("report: no search results given (expected at least one method)")
    if max_plots is not None and max_plots < 0:
        raise DataError(f"report: --max-plots must be >= 0, found {max_plots}")
    if dpi < 20 or dpi > 600:
        raise DataError(f"report: --dpi must be between 20 and 600, found {dpi}")
    if not disagree_ratio >= 1.0:
        raise DataError(f"report: --disagree-ratio must be >= 1, found {disagree_ratio}")
    unknown = sorted({n for by_name in results.values() for n in by_name} - set(hists))
    if unknown:
        raise DataError(f"report: search results name {len(unknown)} tensor(s) that have no "
                        f"histogram, e.g. {unknown[0]!r}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: the report folder path exists and is not a folder")
    previous_report_files(out)  # refuses a non-empty folder that is not a report, up front
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _write(hists, results, out, eval_table=eval_table, max_plots=max_plots, dpi=dpi,
                      disagree_ratio=disagree_ratio, title=title, meta=meta)
    except OSError as exc:
        raise DataError(f"{out}: cannot write the report ({exc})") from exc


def _write(
    hists: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], out: Path, *,
    eval_table: Optional[EvalTable], max_plots: Optional[int], dpi: int, disagree_ratio: float,
    title: str, meta: Optional[Mapping[str, str]],
) -> ReportSummary:
    methods = list(results)
    rows = build_rows(
        hists, results,
        per_tensor_sqnr=eval_table.per_tensor_sqnr if eval_table is not None else None,
        disagree_ratio=disagree_ratio,
    )
    chosen = plot_order(rows, max_plots)
    names = {r.index: plot_file_name(r.index, r.name) for r in chosen}
    rows = [dataclasses.replace(r, plot_file=names.get(r.index)) for r in rows]
    plotted = [rows[r.index] for r in chosen]

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / PLOT_DIR).mkdir()
        hist_list = list(hists.values())
        for row in plotted:
            per_method = {m: results[m][row.name] for m in methods if row.name in results[m]}
            data = tensor_plot_data(hist_list[row.index], per_method)
            render_tensor_plot(data, staging / PLOT_DIR / row.plot_file, dpi=dpi)
        size = _png_size(staging / PLOT_DIR / plotted[0].plot_file) if plotted else (0, 0)
        page_meta = {
            "tensors": str(len(rows)),
            "methods": ", ".join(methods),
            "plots": f"{len(plotted)} (largest spread first)",
            "generated by": f"trtkld {__version__}",
        }
        page_meta.update(meta or {})
        text = render_page(
            title=title, meta=page_meta, rows=rows, methods=methods, plotted=plotted,
            plot_dir=PLOT_DIR, image_size=size, eval_table=eval_table,
            disagree_ratio=disagree_ratio,
        )
        (staging / "index.html").write_text(text, encoding="utf-8")
        # Replace only what the report owns; anything else a user put in the folder stays.
        old_files = previous_report_files(out)
        out.mkdir(exist_ok=True)
        (out / PLOT_DIR).mkdir(exist_ok=True)
        new_files = [f"{PLOT_DIR}/{r.plot_file}" for r in plotted] + ["index.html"]
        for rel in new_files:
            os.replace(staging / rel, out / rel)
        for rel in sorted(set(old_files) - set(new_files)):
            with contextlib.suppress(FileNotFoundError):
                (out / rel).unlink()
        manifest = {"generator": f"trtkld {__version__}", "files": new_files}
        atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportSummary(
        out_dir=out,
        index=out / "index.html",
        plots=tuple(out / PLOT_DIR / r.plot_file for r in plotted),
        rows=tuple(rows),
    )
