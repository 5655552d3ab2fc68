"""Options shared by sub-commands: data sources, preprocessing, methods, TensorRT version."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from importlib import metadata
from typing import Optional

from trtkld.cli import checks
from trtkld.errors import TrtkldError

logger = logging.getLogger("trtkld")

# Distributions that carry TensorRT's Python bindings; read through package metadata so that
# finding the version never imports tensorrt (only trtkld/trt/_backend.py may).
_TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


class CLIError(TrtkldError):
    """An error in the command line itself; printed as one line without a traceback."""


def installed_tensorrt_version() -> Optional[str]:
    """Version of the installed TensorRT Python package, or None (no import of tensorrt)."""
    for dist in _TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_trt_version(requested: Optional[str]) -> str:
    """``requested``, else the installed TensorRT's version, else the default with a warning."""
    from trtkld.cache import DEFAULT_TRT_VERSION, trt_version_number

    if requested:
        trt_version_number(requested)  # validates, raising CacheFormatError on nonsense
        return requested
    installed = installed_tensorrt_version()
    if installed:
        parts = installed.split(".")
        return ".".join(parts[:3])
    logger.warning(
        "TensorRT is not installed here: writing the cache header for TensorRT %s; pass "
        "--trt-version to match the TensorRT that will read the cache",
        DEFAULT_TRT_VERSION,
    )
    return DEFAULT_TRT_VERSION


def add_method_argument(parser: argparse.ArgumentParser, *, default: str) -> None:
    from trtkld.search import available_methods

    parser.add_argument(
        "--method",
        "-m",
        action="append",
        metavar="NAME[,NAME...]",
        help=f"threshold search(es): {', '.join(available_methods())} "
        f"(comma-separated or repeated; default: {default})",
    )
    parser.set_defaults(default_method=default)
    parser.add_argument(
        "--percentile",
        type=checks.percentile,
        help="percentile of |x| kept by the 'percentile' method (default: 99.99)",
    )


def parse_methods(values: Optional[Sequence[str]], default: str = "ppq") -> list[str]:
    """``["ppq,nvidia", "max"]`` -> ``["ppq", "nvidia", "max"]``, checked, duplicates dropped."""
    from trtkld.search import available_methods

    names: list[str] = []
    for value in values or [default]:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    known = available_methods()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CLIError(f"unknown method(s) {unknown}; choose from {', '.join(known)}")
    if not names:
        raise CLIError("--method is empty")
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        msg = f"expected comma-separated numbers, found {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "calibration data",
        "Images are decoded with Pillow and preprocessed as below; defaults come from the "
        "model input's shape (layout, crop size) and the ImageNet preset.",
    )
    group.add_argument(
        "--data",
        help="image folder, .npy file/folder, .npz file/folder (keyed by input name) "
        "(default with --demo: calib_data/)",
    )
    group.add_argument(
        "--data-loader",
        metavar="MODULE:FUNCTION",
        help="Python callable yielding dicts of input name -> array "
        "(module:function or path/to/script.py:function)",
    )
    group.add_argument(
        "--batch-size", type=checks.positive_int,
        help="batch size for a dynamic batch dimension (default 8)"
    )
    group.add_argument(
        "--max-samples", type=checks.positive_int, metavar="N",
        help="read at most N calibration samples (default: all; a --data-loader stops at "
        "10000 with a warning, since it may never end)",
    )
    group.add_argument(
        "--last-batch",
        choices=["pad", "drop"],
        default="pad",
        help="a partial last batch for a fixed batch dimension (default: %(default)s)",
    )
    group.add_argument(
        "--preset",
        choices=["imagenet", "caffe", "unit", "raw"],
        help="normalisation preset (imagenet: /255, ImageNet mean/std, RGB; caffe: BGR minus "
        "[104,117,123]; unit: /255; raw: 0..255)",
    )
    group.add_argument("--resize", type=checks.image_size,
                       help="short side N, or exact HxW, or none")
    group.add_argument("--crop", type=checks.image_size, help="centre crop N or HxW, or none")
    group.add_argument(
        "--resample",
        choices=["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"],
        help="Pillow resize filter (default: bilinear; the demo uses lanczos)",
    )
    group.add_argument("--scale", type=float, help="pixel multiplier before mean/std, e.g. 0.00392")
    group.add_argument("--mean", type=_floats, help="per-channel mean, in model channel order")
    group.add_argument("--std", type=_floats, help="per-channel std, in model channel order")
    group.add_argument("--channel-order", choices=["RGB", "BGR"], help="default RGB")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="default: from the model input")
    group.add_argument("--dtype", type=checks.dtype_name,
                       help="input dtype (default: the model input's)")


def preprocess_from_args(args: argparse.Namespace, defaults: Optional[dict] = None):
    """PreprocessOptions from the command line (None when nothing was given).

    ``defaults`` (e.g. a model's own preprocessing: ``{"preset": "imagenet", ...}``) apply
    where the command line is silent.
    """
    from trtkld.data import PreprocessOptions

    defaults = dict(defaults or {})
    default_preset = defaults.pop("preset", None)
    overrides = dict(defaults)
    for field in ("resize", "crop", "scale", "mean", "std", "channel_order", "layout", "dtype",
                  "resample"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    preset = getattr(args, "preset", None) or default_preset
    if preset:
        return PreprocessOptions.preset(preset, **overrides)
    if overrides:
        return PreprocessOptions(**overrides)
    return None


def open_model_data(args: argparse.Namespace):
    """(model path, CalibrationData) from ``args.model`` / ``--demo`` and the data options."""
    from trtkld.data import input_specs_from_onnx, open_data

    defaults = None
    if getattr(args, "demo", False):
        from trtkld import demo

        if args.model:
            raise CLIError("give either MODEL or --demo, not both")
        model = str(demo.demo_model_path())
        defaults = demo.DEMO_PREPROCESS
        source = args.data or args.data_loader or str(demo.DEMO_CALIB_DIR)
    else:
        if not args.model:
            raise CLIError("MODEL is required (or --demo)")
        model = args.model
        source = args.data_loader or args.data
        if not source:
            raise CLIError("calibration data is required: --data DIR_OR_FILE or --data-loader")
    if args.data and args.data_loader:
        raise CLIError("give either --data or --data-loader, not both")
    if not os.path.isfile(model):
        raise CLIError(f"model file {model!r} does not exist")
    specs = input_specs_from_onnx(model)
    data = open_data(
        source,
        specs,
        batch_size=args.batch_size,
        preprocess=preprocess_from_args(args, defaults),
        last_batch=args.last_batch,
        max_samples=getattr(args, "max_samples", None),
    )
    return model, data


def method_options_from_args(args: argparse.Namespace):
    """--percentile for the methods that use it (None: the searches' own default)."""
    if getattr(args, "percentile", None) is None:
        return None
    return {m: {"percentile": args.percentile} for m in ("percentile", "auto")}
