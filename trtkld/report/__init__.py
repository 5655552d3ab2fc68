"""HTML + PNG report of a calibration: per-tensor histograms with each method's threshold, KL
curves of the KL searches, a summary table and, optionally, the fidelity table of ``trtkld eval``.

matplotlib is imported only when plots are rendered.
"""
from __future__ import annotations

from trtkld.report.build import (
    DEFAULT_DPI,
    DEFAULT_MAX_PLOTS,
    ReportSummary,
    default_report_dir,
    write_report,
)
from trtkld.report.evaljson import EvalTable, load_eval, parse_eval
from trtkld.report.plots import TensorPlotData, render_tensor_plot, tensor_plot_data
from trtkld.report.summary import TensorRow, build_rows

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PLOTS",
    "EvalTable",
    "ReportSummary",
    "TensorPlotData",
    "TensorRow",
    "build_rows",
    "default_report_dir",
    "load_eval",
    "parse_eval",
    "render_tensor_plot",
    "tensor_plot_data",
    "write_report",
]
