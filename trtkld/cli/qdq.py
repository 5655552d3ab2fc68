"""`trtkld qdq`: write a Q/DQ ONNX model (TensorRT 10+/11 explicit quantization) from our scales."""
from __future__ import annotations

import argparse
import os

from trtkld.cli import checks
from trtkld.cli.common import (
    CLIError,
    add_data_arguments,
    add_method_argument,
    method_options_from_args,
    open_model_data,
    parse_methods,
)

EXAMPLES = """\
examples:
  # from a calibration cache written by trtkld calibrate
  trtkld qdq model.onnx --cache model.cache -o model.int8.onnx

  # from saved histograms, searching them now
  trtkld qdq model.onnx --from-histograms h.npz --method mse -o model.int8.onnx

  # straight from calibration data
  trtkld qdq model.onnx --data calib_data/ --method ppq -o model.int8.onnx
"""


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
    parser.add_argument("model", nargs="?", help="FP32 ONNX model (omit with --demo)")
    parser.add_argument("--demo", action="store_true", help="the demo model on calib_data/")
    source = parser.add_argument_group("where the scales come from (one of)")
    source.add_argument("--cache", help="TensorRT calibration cache (trtkld calibrate output)")
    source.add_argument("--from-histograms", metavar="NPZ", nargs="+",
                        help="saved histograms (merged) searched with --method")
    add_data_arguments(parser)
    add_method_argument(parser, default="ppq")
    parser.add_argument("--out", "-o", help="output model (default: MODEL.int8.onnx)")
    parser.add_argument("--op-types", default="Conv,ConvTranspose,Gemm,MatMul",
                        help="op types whose inputs get Q/DQ (default: %(default)s)")
    parser.add_argument("--per-tensor-weights", action="store_true",
                        help="one scale per weight instead of per output channel")
    parser.add_argument(
        "--max-unmatched", type=checks.nonnegative_float, default=0.1, metavar="FRACTION",
        help="with --cache: refuse a cache whose tensors are missing from the model for more "
        "than this share of its entries (another model's cache) (default: %(default)s)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _scales(args: argparse.Namespace, model: str):
    """tensor -> scale from exactly one of --cache, --from-histograms, --data."""
    chosen = [n for n, v in (("--cache", args.cache), ("--from-histograms", args.from_histograms),
                             ("--data", args.data or args.data_loader or args.demo)) if v]
    if len(chosen) != 1:
        raise CLIError(
            "give exactly one source of scales: --cache, --from-histograms or --data "
            f"(found {', '.join(chosen) or 'none'})"
        )
    if args.cache:
        from trtkld.cache import parse_cache

        scales = parse_cache(args.cache).scales
        _check_cache_matches_model(scales, model, args.cache, args.max_unmatched)
        return scales, model
    methods = parse_methods(args.method, args.default_method)
    if len(methods) != 1:
        raise CLIError(f"--method: qdq writes one model, give one method (found {methods})")
    method_options = method_options_from_args(args)
    if args.from_histograms:
        from trtkld.pipeline import search_histograms

        hists = checks.load_histogram_files(args.from_histograms)
        results = search_histograms(hists, methods[0], method_options=method_options)
        return {n: r.scale for n, r in results.items()}, model
    from trtkld.cache import DEFAULT_TRT_VERSION
    from trtkld.pipeline import calibrate
    from trtkld.qdq import quantizable_activations

    model, data = open_model_data(args)
    include = [_escape(n) for n in quantizable_activations(model, _split(args.op_types))]
    _, outcomes = calibrate(model, data, methods, trt_version=DEFAULT_TRT_VERSION,
                            include=include, quiet=args.quiet, method_options=method_options)
    return outcomes[methods[0]].cache.scales, model


def _check_cache_matches_model(scales: dict, model: str, cache: str, limit: float) -> None:
    """Refuse another model's cache: too many of its tensor names are not in the model."""
    import logging

    import onnx

    from trtkld.errors import CacheFormatError

    proto = onnx.load(model, load_external_data=False)
    graph = proto.graph
    names = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names.update(o for node in graph.node for o in node.output)
    unmatched = [n for n in scales if n not in names]
    if not unmatched:
        return
    listing = ", ".join(repr(n) for n in unmatched[:20]) + (
        f" and {len(unmatched) - 20} more" if len(unmatched) > 20 else "")
    share = len(unmatched) / len(scales)
    if share > limit or len(unmatched) == len(scales):
        raise CacheFormatError(
            f"calibration cache {cache!r}: {len(unmatched)} of its {len(scales)} tensors are not "
            f"in {model!r} ({share:.0%} > --max-unmatched {limit:g}); is it another model's "
            f"cache? Not in the model: {listing}"
        )
    logging.getLogger("trtkld.qdq").warning(
        "calibration cache %r: %d of its %d tensors are not in %r and are ignored: %s",
        cache, len(unmatched), len(scales), model, listing,
    )


def _escape(name: str) -> str:
    import re

    return re.escape(name)




def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from trtkld.qdq import write_qdq_model

    model = args.model
    if args.demo:
        from trtkld import demo

        if model:
            raise CLIError("give either MODEL or --demo, not both")
        model = str(demo.demo_model_path())
    if not model:
        raise CLIError("MODEL is required (or --demo)")
    if not os.path.isfile(model):
        raise CLIError(f"model file {model!r} does not exist")
    op_types = _split(args.op_types)
    if not op_types:
        raise CLIError("--op-types is empty")
    out = args.out or ("demo.int8.onnx" if args.demo else f"{os.path.splitext(model)[0]}.int8.onnx")
    data_files = []
    if args.data and os.path.exists(args.data):
        from trtkld.data.sources import scan_folder

        data_files = scan_folder(args.data)[1] if os.path.isdir(args.data) else [args.data]
    checks.check_outputs({"--out" if args.out else "the default output": out}, {
        "the model": [model], "--cache": [args.cache],
        "a --from-histograms input": list(args.from_histograms or []),
        "a calibration data file": data_files,
        "the data loader script": checks.loader_script(args.data_loader),
    })
    scales, model = _scales(args, model)
    summary = write_qdq_model(model, scales, out, op_types=op_types,
                              per_channel=not args.per_tensor_weights)
    print(summary.describe())
    return 0
