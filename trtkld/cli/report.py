"""`trtkld report`: HTML page + PNG plots comparing the threshold searches tensor by tensor."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from trtkld.cli import checks
from trtkld.cli.args import DataArgs, MethodArgs, ModelArgs, QuietArgs, model_and_data
from trtkld.cli.common import CLIError
from trtkld.search.registry import METHODS

log = logging.getLogger("trtkld.report")

# Methods compared by default: the registry's ``in_report`` records.
DEFAULT_METHODS = ",".join(r.name for r in METHODS.values() if r.in_report)

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


INPUT_GROUP = "input (one of MODEL, --histograms, --demo)"
MODEL = ModelArgs(model_help="ONNX model to calibrate first (needs --data)",
                  demo_help="the bundled demo model with the repository's calib_data/ (an "
                  "input, like MODEL and --histograms)")
DATA = DataArgs()
METHODS = MethodArgs(DEFAULT_METHODS)


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
    MODEL.add_to(p)
    src = p.add_argument_group(INPUT_GROUP)
    src.add_argument("--histograms", metavar="H.npz",
                     help="histograms saved by trtkld (HistogramSet .npz); no model run")
    src.add_argument("--save-histograms", metavar="H.npz",
                     help="with MODEL/--demo: also save the collected histograms, for later "
                          "--histograms runs")
    DATA.add_to(p)
    METHODS.add_to(p)
    out = p.add_argument_group("report")
    out.add_argument("--eval", dest="eval_json", metavar="EVAL.json",
                     help="JSON from `trtkld eval --json`: fidelity table and per-tensor SQNR")
    out.add_argument("--out", "-o", metavar="DIR",
                     help="report folder (default: INPUT with suffix .report; "
                          "demo.report with --demo)")
    out.add_argument("--max-plots", type=int, default=None, metavar="N",
                     help="plot at most N tensors, largest amax spread first; the table always "
                          "lists every tensor (default: 200; 0: no plots)")
    out.add_argument("--dpi", type=int, default=None, help="PNG resolution (default: 72)")
    QuietArgs().add_to(out)
    out.add_argument("--disagree-ratio", type=float, default=None, metavar="R",
                     help="flag tensors whose largest/smallest amax differ by more than R "
                          "(default: 2)")
    p.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace, source: Path, *, model=None, data) -> None:
    from trtkld.report import default_report_dir
    from trtkld.report.build import previous_report_files

    out = Path(args.out) if args.out else default_report_dir(source)
    label = "--out" if args.out else "the default report folder"
    checks.check_outputs(
        {label: str(out), "--save-histograms": args.save_histograms},
        {"the model": [model], "--histograms": [args.histograms], "--eval": [args.eval_json],
         "a calibration data file": checks.data_files(data),
         "the data loader script": checks.loader_script(args.data_loader)},
        folders=[label],
    )
    previous_report_files(out)  # a non-empty folder that is not a report is refused now
    args.out = str(out)


def run(args: argparse.Namespace) -> int:
    from trtkld.calibration import calibrate
    from trtkld.report import DEFAULT_DPI, DEFAULT_MAX_PLOTS, default_report_dir, write_report
    from trtkld.report.evaljson import load_eval
    from trtkld.report.summary import DEFAULT_DISAGREE_RATIO

    given = [x for x in (args.model, args.histograms, args.demo or None) if x]
    if len(given) != 1:
        raise CLIError("report: give exactly one input: MODEL.onnx (with --data), "
                       f"--histograms H.npz, or --demo; found {len(given)}")
    methods = METHODS.parse(args)
    options = METHODS.search_options(args)
    # Read the eval JSON before the (possibly long) collection so a bad path fails fast.
    eval_table = load_eval(args.eval_json) if args.eval_json else None

    if args.histograms:
        source = Path(args.histograms)
        if not source.is_file():
            raise CLIError(f"{source}: histogram file not found")
        _check_outputs(args, source, data=None)
        hists = checks.load_histogram_files([args.histograms], "--histograms")
        results = calibrate(None, histograms=hists, methods=methods, **options).results
    else:
        choice, data_source = model_and_data(args, MODEL, DATA)
        source = Path(choice.path)
        if args.demo and args.out is None:
            # The demo model lives in the installed package; write next to the user instead.
            args.out = "demo.report"
        data = DATA.open(args, choice, data_source)
        _check_outputs(args, source, model=choice.path, data=data)  # before any collection
        cal = calibrate(choice.path, data, methods, quiet=args.quiet, **options)
        hists, results = cal.histograms, cal.results
        if args.save_histograms:
            hists.save(args.save_histograms)
            log.info("histograms saved to %s", args.save_histograms)

    out = Path(args.out) if args.out else default_report_dir(source)
    meta = {"input": str(source)}
    if args.eval_json:
        meta["eval"] = str(args.eval_json)
    summary = write_report(
        hists, results, out,
        eval_table=eval_table,
        max_plots=DEFAULT_MAX_PLOTS if args.max_plots is None else args.max_plots,
        dpi=DEFAULT_DPI if args.dpi is None else args.dpi,
        disagree_ratio=DEFAULT_DISAGREE_RATIO if args.disagree_ratio is None
        else args.disagree_ratio,
        title=f"trtkld report: {source.name}",
        meta=meta,
    )
    flagged = sum(r.disagree for r in summary.rows)
    print(f"report: {summary.index} ({len(summary.rows)} tensors, {len(summary.plots)} plots, "
          f"{flagged} flagged where the methods disagree)")
    return 0
