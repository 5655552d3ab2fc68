"""Options shared by sub-commands: data sources, preprocessing, methods, TensorRT version."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Optional

from trtkld.errors import TrtkldError

logger = logging.getLogger("trtkld")

class CLIError(TrtkldError):
    """An error in the command line itself; printed as one line without a traceback."""


def add_method_argument(parser: argparse.ArgumentParser, *, default: str) -> None:
    """``--method`` and one flag per search option (``--percentile``), all from the registry."""
    from trtkld.search.registry import METHODS, all_options, methods_taking

    parser.add_argument(
        "--method",
        "-m",
        action="append",
        metavar="NAME[,NAME...]",
        help=f"threshold search(es): {', '.join(METHODS)} "
        f"(comma-separated or repeated; default: {default})",
    )
    parser.set_defaults(default_method=default)
    for option in all_options().values():
        users = ", ".join(methods_taking(option.name))
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            dest=option.name,
            type=option.type,
            help=option.help.replace("%(default)s", str(option.default)) + f" [{users}]",
        )


def parse_methods(values: Optional[Sequence[str]], default: str = "ppq") -> list[str]:
    """``["ppq,nvidia", "max"]`` -> ``["ppq", "nvidia", "max"]``, checked, duplicates dropped."""
    from trtkld.search.registry import check_methods

    names: list[str] = []
    for value in values or [default]:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise CLIError("--method is empty")
    return check_methods(names)


def search_options_from_args(args: argparse.Namespace) -> dict:
    """Search options given on the command line (registry options; None = not given)."""
    from trtkld.search.registry import all_options

    return {name: getattr(args, name, None) for name in all_options()
            if getattr(args, name, None) is not None}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        msg = f"expected comma-separated numbers, found {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


def _size(text: str):
    if text.lower() in ("none", "off"):
        return "none"  # an explicit "no resize/crop", unlike None which means "auto"
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N or HxW, found {text!r}") from exc
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected N or HxW, found {text!r}")


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
        "--batch-size", type=int, help="batch size for a dynamic batch dimension (default 8)"
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
    group.add_argument("--resize", type=_size, help="short side N, or exact HxW, or none")
    group.add_argument("--crop", type=_size, help="centre crop N or HxW, or none")
    group.add_argument("--scale", type=float, help="pixel multiplier before mean/std, e.g. 0.00392")
    group.add_argument("--mean", type=_floats, help="per-channel mean, in model channel order")
    group.add_argument("--std", type=_floats, help="per-channel std, in model channel order")
    group.add_argument("--channel-order", choices=["RGB", "BGR"], help="default RGB")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="default: from the model input")
    group.add_argument("--dtype", help="input dtype (default: the model input's)")


def preprocess_from_args(args: argparse.Namespace, defaults: Optional[dict] = None):
    """PreprocessOptions from the command line (None when nothing was given).

    ``defaults`` (e.g. a model's own preprocessing: ``{"preset": "imagenet", ...}``) apply
    where the command line is silent.
    """
    from trtkld.data import PreprocessOptions

    defaults = dict(defaults or {})
    default_preset = defaults.pop("preset", None)
    overrides = dict(defaults)
    for field in ("resize", "crop", "scale", "mean", "std", "channel_order", "layout", "dtype"):
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
    )
    return model, data


def method_options_from_args(args: argparse.Namespace):
    """Search options routed to the methods taking them (None: the searches' own defaults)."""
    from trtkld.search.registry import options_for_methods

    return options_for_methods(search_options_from_args(args)) or None
