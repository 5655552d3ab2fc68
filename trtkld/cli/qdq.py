"""`trtkld qdq`: write a Q/DQ ONNX model (TensorRT 10+/11 explicit quantization) from our scales."""
from __future__ import annotations

import argparse
import os
import re

from trtkld.cli import checks
from trtkld.cli.args import DataArgs, MethodArgs, ModelArgs, QdqArgs, QuietArgs, add_groups
from trtkld.cli.common import CLIError
from trtkld.cli.keepfloat import KeepFloatNamesArgs

EXAMPLES = """\
examples:
  # from a calibration cache written by trtkld calibrate
  trtkld qdq model.onnx --cache model.cache -o model.int8.onnx

  # from saved histograms, searching them now
  trtkld qdq model.onnx --from-histograms h.npz --method mse -o model.int8.onnx

  # straight from calibration data
  trtkld qdq model.onnx --data calib_data/ --method ppq -o model.int8.onnx

  # a bundled real model on its own calibration data and preprocessing -> layout.int8.onnx
  trtkld qdq --model-preset layout --method ppq
"""


MODEL = ModelArgs(model_help="FP32 ONNX model (omit with --demo / --model-preset)",
                  demo_help="the demo model on calib_data/", presets=True)
DATA = DataArgs()
METHODS = MethodArgs("ppq", single=True)
QDQ = QdqArgs()
KEEP_FLOAT = KeepFloatNamesArgs()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "qdq",
        help="write a Q/DQ ONNX model whose activation scales are the cache's scales",
        description=(
            "Insert QuantizeLinear/DequantizeLinear pairs (with ONNX Runtime's QDQ quantizer) on "
            "the inputs of Conv/ConvTranspose/Gemm/MatMul: activations symmetric INT8 with "
            "exactly the calibration scales (zero point 0), weights per-channel symmetric by "
            "max, biases and op outputs left in float - TensorRT's explicit-quantization "
            "placement. Tensors without a scale stay float (a warning lists them). Models "
            "below opset 13 are converted to 13 first."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    MODEL.add_to(parser)
    source = parser.add_argument_group("where the scales come from (one of)")
    source.add_argument("--cache", help="TensorRT calibration cache (trtkld calibrate output)")
    source.add_argument("--from-histograms", metavar="NPZ", nargs="+",
                        help="saved histograms (merged) searched with --method")
    add_groups(parser, DATA, METHODS)
    parser.add_argument("--out", "-o", help="output model (default: MODEL.int8.onnx; with "
                        "--demo or --model-preset NAME: NAME.int8.onnx in the current folder)")
    QDQ.add_to(parser)
    parser.add_argument(
        "--max-unmatched", type=checks.nonnegative_float, default=0.1, metavar="FRACTION",
        help="with --cache: refuse a cache whose tensors are missing from the model for more "
        "than this share of its entries (another model's cache; 1 never refuses) "
        "(default: %(default)s)",
    )
    add_groups(parser, KEEP_FLOAT, QuietArgs())
    parser.set_defaults(func=run)


def _scales(args: argparse.Namespace, choice, op_types: list[str]):
    """tensor -> scale from exactly one of --cache, --from-histograms, --data."""
    # A bundled model brings its own calibration data (--demo always counts as giving it).
    bundled_data = args.demo or (choice.is_bundled and not (args.cache or args.from_histograms))
    chosen = [n for n, v in (("--cache", args.cache), ("--from-histograms", args.from_histograms),
                             ("--data", DataArgs.given(args) or bundled_data)) if v]
    if len(chosen) != 1:
        raise CLIError(
            "give exactly one source of scales: --cache, --from-histograms or --data "
            f"(found {', '.join(chosen) or 'none'})"
        )
    if args.cache:
        from trtkld.cache import parse_cache

        scales = parse_cache(args.cache).scales
        _check_cache_matches_model(scales, choice.path, args.cache, args.max_unmatched)
        return scales
    from trtkld.calibration import calibrate

    methods = METHODS.parse(args)
    options = METHODS.search_options(args)
    if args.from_histograms:
        hists = checks.load_histogram_files(args.from_histograms)
        return calibrate(choice.path, histograms=hists, methods=methods, **options).scales()
    from trtkld.qdq import quantizable_activations

    include = [re.escape(n) for n in quantizable_activations(choice.path, op_types)]
    cal = calibrate(choice.path, DATA.open(args, choice), methods, include=include,
                    quiet=args.quiet, **options)
    return cal.scales()


def _check_cache_matches_model(scales: dict, model: str, cache: str, limit: float) -> None:
    """Refuse another model's cache: too many of its tensor names are not in the model."""
    import logging

    import onnx

    from trtkld.errors import CacheFormatError

    graph = onnx.load(model, load_external_data=False).graph
    names = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names.update(o for node in graph.node for o in node.output)
    unmatched = [n for n in scales if n not in names]
    if not unmatched:
        return
    listing = ", ".join(repr(n) for n in unmatched[:20]) + (
        f" and {len(unmatched) - 20} more" if len(unmatched) > 20 else "")
    share = len(unmatched) / len(scales)
    if share > limit:
        raise CacheFormatError(
            f"calibration cache {cache!r}: {len(unmatched)} of its {len(scales)} tensors are not "
            f"in {model!r} ({share:.0%} > --max-unmatched {limit:g}); is it another model's "
            f"cache? Not in the model: {listing}"
        )
    logging.getLogger("trtkld.qdq").warning(
        "calibration cache %r: %d of its %d tensors are not in %r and are ignored: %s",
        cache, len(unmatched), len(scales), model, listing,
    )


def run(args: argparse.Namespace) -> int:
    from trtkld.qdq import write_qdq_model

    choice = MODEL.parse(args)
    op_types = QDQ.op_types(args)
    # A bundled model's output goes to the current folder, never beside it (site-packages).
    out = args.out or (f"{choice.bundled.name}.int8.onnx" if choice.is_bundled
                       else f"{os.path.splitext(choice.path)[0]}.int8.onnx")
    data_files = []
    source = args.data or (str(choice.bundled.calib_dir) if choice.is_bundled else None)
    if source and os.path.exists(source):
        from trtkld.data.sources import scan_folder

        data_files = ([source] if not os.path.isdir(source)
                      else scan_folder(source, report_ignored=False)[1])
    # before any work: the output is none of the inputs
    checks.check_outputs({"--out" if args.out else "the default output": out}, {
        "the model": [choice.path], "--cache": [args.cache],
        "a --from-histograms input": list(args.from_histograms or []),
        "a calibration data file": data_files,
        "the data loader script": checks.loader_script(args.data_loader),
    })
    scales = _scales(args, choice, op_types)
    keep = KEEP_FLOAT.parse(args, choice.path, op_types, cache=args.cache)
    summary = write_qdq_model(choice.path, scales, out, op_types=op_types,
                              per_channel=QDQ.per_channel(args), keep_float=keep)
    print(summary.describe())
    return 0
