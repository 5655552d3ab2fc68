"""`trtkld report`: HTML page + PNG plots comparing the threshold searches tensor by tensor."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from trtkld.errors import DataError

log = logging.getLogger("trtkld.report")

DEFAULT_METHODS = "ppq,nvidia,modelopt,max,percentile"

_EXAMPLES = """\
examples:
  # from saved histograms (fast: no model run)
  trtkld report --histograms model.hist.npz --method ppq,nvidia,modelopt,max,percentile
  # collect first, then report; add the fidelity table of `trtkld eval --json`
  trtkld report model.onnx --data calib_data/ --method ppq,nvidia,max --eval eval.json
  # the bundled demo model and calibration images
  trtkld report --demo --max-plots 40 --out demo.report

The report folder (default: next to the input, MODEL.onnx -> MODEL.report/) holds index.html
and plots/*.png with relative links; open index.html in any browser.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="HTML report: per-tensor histograms, thresholds and KL curves of each method",
        description=(
            "Write an HTML page with one PNG per tensor - the |x| histogram (log-y) with a\n"
            "vertical line at each method's threshold, and the KL-versus-candidate curves of the\n"
            "KL searches - and a summary table of every tensor: absmax, NaN/Inf counts, and per\n"
            "method amax, scale, clipped %, KL and (with --eval) per-tensor SQNR; rows where the\n"
            "methods disagree are flagged. With --eval, also the fidelity table of trtkld eval."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="ONNX model to calibrate first (needs --data)")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--histograms", metavar="H.npz",
                     help="histograms saved by trtkld (HistogramSet .npz); no model run")
    src.add_argument("--demo", action="store_true",
                     help="the bundled demo model with the repository's calib_data/")
    data = p.add_argument_group("calibration data (with MODEL)")
    data.add_argument("--data", metavar="SOURCE",
                      help="image folder, .npy/.npz file or folder, or module:function")
    data.add_argument("--preset", metavar="NAME",
                      help="image preprocessing preset: imagenet, caffe, unit, raw "
                           "(default: decided from the model input)")
    data.add_argument("--batch-size", type=int, metavar="N", help="samples per batch")
    data.add_argument("--save-histograms", metavar="H.npz",
                      help="also save the collected histograms, for later --histograms runs")
    p.add_argument("--method", default=DEFAULT_METHODS, metavar="M1,M2,...",
                   help=f"comma-separated searches to compare (default: {DEFAULT_METHODS})")
    p.add_argument("--eval", dest="eval_json", metavar="EVAL.json",
                   help="JSON from `trtkld eval --json`: fidelity table and per-tensor SQNR")
    p.add_argument("--out", "-o", metavar="DIR",
                   help="report folder (default: INPUT with suffix .report)")
    p.add_argument("--max-plots", type=int, default=None, metavar="N",
                   help="plot at most N tensors, largest amax spread first; the table always "
                        "lists every tensor (default: 200; 0: no plots)")
    p.add_argument("--dpi", type=int, default=None, help="PNG resolution (default: 72)")
    p.add_argument("--disagree-ratio", type=float, default=None, metavar="R",
                   help="flag tensors whose largest/smallest amax differ by more than R "
                        "(default: 2)")
    p.set_defaults(func=run)


def parse_methods(text: str) -> list[str]:
    """``"ppq, nvidia,ppq"`` -> ``["ppq", "nvidia"]`` (order kept, duplicates dropped),
    checked against the available searches."""
    from trtkld.search import available_methods

    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods:
        raise DataError(f"--method: expected a comma-separated list of searches, found {text!r}")
    known = list(available_methods())
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise DataError(f"--method: unknown search(es) {', '.join(unknown)}; expected some of "
                        f"{', '.join(known)}")
    return methods


def _from_histograms(path: str, methods: list[str]) -> tuple[Any, dict[str, dict[str, Any]]]:
    from trtkld.histogram import HistogramSet
    from trtkld.pipeline import search_histograms

    hists = HistogramSet.load(path)
    return hists, {m: search_histograms(hists, m) for m in methods}


def _from_model(args: argparse.Namespace, model: Path, data_source: str, methods: list[str],
                preset: str | None) -> tuple[Any, dict[str, dict[str, Any]]]:
    from trtkld.cache import DEFAULT_TRT_VERSION
    from trtkld.data import PreprocessOptions, input_specs_from_onnx, open_data
    from trtkld.pipeline import calibrate

    if not model.is_file():
        raise DataError(f"{model}: model file not found")
    specs = input_specs_from_onnx(model)
    preprocess = PreprocessOptions.preset(preset) if preset else None
    data = open_data(data_source, specs, batch_size=args.batch_size, preprocess=preprocess)
    hists, outcomes = calibrate(model, data, methods, trt_version=DEFAULT_TRT_VERSION)
    if args.save_histograms:
        hists.save(args.save_histograms)
        log.info("histograms saved to %s", args.save_histograms)
    return hists, {m: outcomes[m].results for m in methods}


def run(args: argparse.Namespace) -> int:
    from trtkld.report import DEFAULT_DPI, DEFAULT_MAX_PLOTS, default_report_dir, write_report
    from trtkld.report.evaljson import load_eval
    from trtkld.report.summary import DEFAULT_DISAGREE_RATIO

    given = [x for x in (args.model, args.histograms, args.demo or None) if x]
    if len(given) != 1:
        raise DataError("report: give exactly one input: MODEL.onnx (with --data), "
                        f"--histograms H.npz, or --demo; found {len(given)}")
    methods = parse_methods(args.method)
    # Read the eval JSON before the (possibly long) collection so a bad path fails fast.
    eval_table = load_eval(args.eval_json) if args.eval_json else None

    if args.histograms:
        source = Path(args.histograms)
        if not source.is_file():
            raise DataError(f"{source}: histogram file not found")
        hists, results = _from_histograms(args.histograms, methods)
    else:
        preset = args.preset
        if args.demo:
            from trtkld.demo import DEMO_CALIB_DIR, DEMO_PRESET, demo_model_path

            source, data_source = Path(demo_model_path()), str(DEMO_CALIB_DIR)
            if args.data:
                data_source = args.data
            preset = preset or DEMO_PRESET
            if args.out is None:
                # The demo model lives in the installed package; write next to the user.
                args.out = "demo.report"
        else:
            source = Path(args.model)
            if not args.data:
                raise DataError(f"report: {source}: --data is required with a model (or use "
                                "--histograms H.npz)")
            data_source = args.data
        hists, results = _from_model(args, source, data_source, methods, preset)

    out = Path(args.out) if args.out else default_report_dir(source)
    summary = write_report(
        hists, results, out,
        eval_table=eval_table,
        max_plots=DEFAULT_MAX_PLOTS if args.max_plots is None else args.max_plots,
        dpi=DEFAULT_DPI if args.dpi is None else args.dpi,
        disagree_ratio=DEFAULT_DISAGREE_RATIO if args.disagree_ratio is None
        else args.disagree_ratio,
        title=f"trtkld report: {source.name}",
        meta={"input": str(source)} | ({"eval": str(args.eval_json)} if args.eval_json else {}),
    )
    flagged = sum(r.disagree for r in summary.rows)
    print(f"report: {summary.index} ({len(summary.rows)} tensors, {len(summary.plots)} plots, "
          f"{flagged} flagged where the methods disagree)")
    return 0
