"""`trtkld build`: ONNX model -> INT8 TensorRT engine, calibrated with trtkld's thresholds."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from trtkld.cli.args import DataArgs, MethodArgs, ModelArgs, QuietArgs
from trtkld.cli.common import CLIError
from trtkld.errors import OutputError, TrtkldError

logger = logging.getLogger("trtkld.build")

BASE_CLASSES = {
    "entropy2": "IInt8EntropyCalibrator2",
    "entropy": "IInt8EntropyCalibrator",
    "minmax": "IInt8MinMaxCalibrator",
}

EXAMPLES = """\
examples:
  # calibrate with PPQ's search on calib_data/ and build model.plan (cache: model.cache)
  trtkld build model.onnx --data calib_data/ --method ppq --cache model.cache --engine model.plan

  # rebuild from the cache written above: it is reused when TensorRT's version, the
  # algorithm and the method all match (model.cache.trtkld.json records the method)
  trtkld build model.onnx --cache model.cache --engine model.plan

  # histograms from a TensorRT FP32 engine on the GPU (TensorRT's tensor names)
  trtkld build model.onnx --data imgs/ --collector tensorrt

  # TensorRT's own calibration for comparison: its cache goes to model.tensorrt.cache
  trtkld build model.onnx --data imgs/ --method tensorrt --engine model.trt-builtin.plan
  trtkld diff model.cache model.tensorrt.cache

needs TensorRT 8.6 - 10.x and pycuda (NVIDIA's TensorRT container + pip install trtkld[tensorrt]).
TensorRT 11 has no calibrators: use `trtkld qdq` there.
"""


class TensorRTBuildError(TrtkldError, RuntimeError):
    """TensorRT did not produce an engine."""


MODEL = ModelArgs(demo_help="the bundled demo model on calib_data/")
DATA = DataArgs()
METHODS = MethodArgs(
    "ppq", single=True, extra=("tensorrt",),
    extra_help="'tensorrt' runs TensorRT's built-in calibration and keeps its cache in "
    "MODEL.tensorrt.cache for `trtkld diff`",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build an INT8 TensorRT engine with trtkld's calibrator",
        description=(
            "Parse MODEL with TensorRT's ONNX parser, set INT8 with trtkld's KLDCalibrator and "
            "build the engine. The calibrator hands TensorRT our cache (reused, or made from "
            "fresh histograms and the chosen search), so TensorRT skips its own entropy "
            "search. Lists the network tensors the cache has no scale for: TensorRT runs "
            "their layers in higher precision."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    MODEL.add_to(parser)
    parser.add_argument("--cache", help="calibration cache (default: MODEL.cache)")
    parser.add_argument("--engine", help="serialized engine to write (default: MODEL.plan)")
    METHODS.add_to(parser)
    parser.add_argument(
        "--collector",
        choices=["onnxruntime", "tensorrt"],
        default="onnxruntime",
        help="histograms from ONNX Runtime on CPU, or from a TensorRT FP32 engine with the "
        "|x| histograms accumulated on the GPU (default: %(default)s)",
    )
    parser.add_argument(
        "--calibrator",
        choices=sorted(BASE_CLASSES),
        default="entropy2",
        help="TensorRT calibrator base class; sets the cache header algorithm "
        "(default: %(default)s = IInt8EntropyCalibrator2)",
    )
    shapes = parser.add_argument_group(
        "engine shapes (networks with runtime dimensions)",
        "The engine's build profile, separate from the calibration profile (which is always "
        "the calibration batch's shape). Each takes NAME:DxDx...D[,NAME:...] like trtexec, "
        "e.g. --min-shapes images:1x3x224x224. An input given in none of them accepts only "
        "the calibration shape; given in one or two, that shape fills the others.",
    )
    for which in ("min", "opt", "max"):
        shapes.add_argument(
            f"--{which}-shapes", metavar="SHAPES",
            help=f"{which.upper()} shapes of the engine's optimization profile",
        )
    parser.add_argument("--fp16", action="store_true", help="also allow FP16 kernels")
    parser.add_argument(
        "--workspace-mb", type=int, help="builder workspace limit in MiB (default: TensorRT's)"
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate the cache even if it could be reused"
    )
    QuietArgs().add_to(parser)
    DATA.add_to(parser)
    parser.set_defaults(func=run)


def _static_shapes(model: str) -> dict[str, tuple[int, ...]]:
    from trtkld.data import input_specs_from_onnx

    shapes = {}
    for spec in input_specs_from_onnx(model):
        if not all(isinstance(d, int) for d in spec.shape):
            raise CLIError(
                f"input {spec.name!r} of {model} has runtime dimensions {spec.shape_str()}: "
                f"give --data so the calibration shape can be taken from the first batch"
            )
        shapes[spec.name] = tuple(spec.shape)
    return shapes


def run(args: argparse.Namespace) -> int:
    from trtkld import trt as trt_layer
    from trtkld.trt import engine as trt_engine
    from trtkld.trt.profiles import parse_shapes

    shape_options = {  # bad input is reported first, with or without TensorRT
        f"{which}_shapes": parse_shapes(getattr(args, f"{which}_shapes"), f"--{which}-shapes")
        for which in ("min", "opt", "max")
        if getattr(args, f"{which}_shapes")
    }
    (method,) = METHODS.parse(args)
    choice = MODEL.parse(args)
    model = choice.path
    data = DATA.open(args, choice) if choice.is_bundled or DataArgs.given(args) else None
    stem = os.path.splitext(model)[0] if not args.demo else "demo"
    cache = Path(args.cache or f"{stem}.cache")
    engine = Path(args.engine or f"{stem}.plan")
    from trtkld.cache.sidecar import sidecar_path, tensorrt_cache_path
    from trtkld.cli import checks

    # before any work (and before needing TensorRT): no output is an input or another output
    cache_label = "--cache" if args.cache else "the default cache"
    outputs = {"--engine" if args.engine else "the default engine": str(engine),
               cache_label: str(cache),
               f"the metadata file of {cache_label}": str(sidecar_path(cache))}
    if method == "tensorrt":
        outputs["TensorRT's own cache"] = str(tensorrt_cache_path(cache))
    checks.check_outputs(outputs, {
        "the model": [model],
        "a calibration data file": checks.data_files(data),
        "the data loader script": checks.loader_script(args.data_loader),
    })
    trt = trt_layer.require_calibrator_api()  # clear error without TensorRT / under TensorRT 11

    from trtkld.cache import parse_cache
    from trtkld.trt.calibrator import KLDCalibrator

    base = getattr(trt, BASE_CLASSES[args.calibrator])
    with KLDCalibrator(
        data, method, cache, model, base_class=base, collector=args.collector,
        force=args.force, quiet=args.quiet,
    ) as calib:
        if method != "tensorrt":
            calib.prepare()  # outside TensorRT's callback: errors surface directly
        shapes = calib.calibration_shapes() if data is not None else _static_shapes(model)
        plan, tensor_names = trt_engine.build_int8_engine(
            model, calib, calibration_shapes=shapes, fp16=args.fp16, **shape_options,
            workspace_bytes=args.workspace_mb * 2**20 if args.workspace_mb else None,
        )
        calib.check()
        if plan is None:
            raise TensorRTBuildError(
                f"TensorRT did not build an engine for {model} (see the TensorRT errors above)"
            )
        _write_engine(engine, plan)
        used = calib.tensorrt_cache_file if method == "tensorrt" else cache
        status = calib.cache_status or "TensorRT's own calibration"
    scales = parse_cache(used).scales if used.is_file() else {}
    print(_report(model, engine, used, status, calib.regeneration_reason, tensor_names, scales))
    return 0


def _write_engine(path: Path, plan) -> None:
    """The serialized engine, written atomically; OutputError (not a cache error) on failure."""
    from trtkld._io import atomic_write

    try:
        atomic_write(path, bytes(plan))
    except OSError as exc:
        raise OutputError(f"cannot write engine {path}: {exc.strerror or exc}") from exc


def _report(
    model: str,
    engine: Path,
    cache: Path,
    status: str,
    reason: Optional[str],
    tensor_names: list[str],
    scales: dict,
    limit: int = 40,
) -> str:
    lines = [f"engine: {engine} ({engine.stat().st_size} bytes) from {model}"]
    why = f" ({reason})" if reason and status == "generated" else ""
    lines.append(f"calibration cache: {cache}, {status}{why}, {len(scales)} scales")
    missing = [n for n in tensor_names if n not in scales]
    if missing:
        lines.append(
            f"{len(missing)} of {len(tensor_names)} float network tensors have no scale "
            f"(TensorRT runs their layers in higher precision):"
        )
        lines += [f"  {n}" for n in missing[:limit]]
        if len(missing) > limit:
            lines.append(f"  ... and {len(missing) - limit} more")
    else:
        lines.append(f"every one of the {len(tensor_names)} float network tensors has a scale")
    return "\n".join(lines)
