"""`trtkld qdq`: write a Q/DQ ONNX model (TensorRT 10+/11 explicit quantization) from our scales."""
from __future__ import annotations

import argparse
import os

from trtkld.cli.common import (
    CLIError,
    add_data_arguments,
    add_method_argument,
    method_options_from_args,
    open_model_data,
    parse_methods,
)
from trtkld.cli.keepfloat import add_keep_float_names, check_names, split_names

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
    add_keep_float_names(parser)
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

        return parse_cache(args.cache).scales, model
    methods = parse_methods(args.method, args.default_method)
    if len(methods) != 1:
        raise CLIError(f"--method: qdq writes one model, give one method (found {methods})")
    method_options = method_options_from_args(args)
    if args.from_histograms:
        from trtkld.histogram import HistogramSet
        from trtkld.pipeline import search_histograms

        hists = HistogramSet.load(args.from_histograms[0])
        for extra in args.from_histograms[1:]:
            hists = hists.merge(HistogramSet.load(extra))
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


def _keep_float(args: argparse.Namespace, model: str, op_types: list[str]) -> list[str]:
    """--keep-float-names plus, with --cache, the tensors its sidecar says were kept float."""
    from trtkld.qdq import quantizable_activations

    names = split_names(args.keep_float_names)
    if names:
        check_names(names, quantizable_activations(model, op_types), "--keep-float-names")
    if args.cache:
        from trtkld.cache import sidecar

        recorded = (sidecar.read_metadata(args.cache) or {}).get("keep_float") or []
        names += [n for n in recorded if isinstance(n, str) and n not in names]
    return names


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
    scales, model = _scales(args, model)
    keep = _keep_float(args, model, op_types)
    out = args.out or ("demo.int8.onnx" if args.demo else f"{os.path.splitext(model)[0]}.int8.onnx")
    summary = write_qdq_model(model, scales, out, op_types=op_types,
                              per_channel=not args.per_tensor_weights, keep_float=keep)
    print(summary.describe())
    return 0
