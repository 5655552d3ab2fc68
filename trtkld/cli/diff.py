"""`trtkld diff A.cache B.cache`: compare two TensorRT calibration caches.

Typical use: our cache against one TensorRT wrote for the same model. A difference is a result,
not an error (exit 0); ``--fail-above`` / ``--fail-on-missing`` turn chosen differences into
exit status 1 for scripts. Malformed or unreadable caches exit 2 (main.py prints the error).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from typing import TextIO

from trtkld.cache import (
    CacheDiff,
    UnknownAlgorithmWarning,
    diff_caches,
    format_trt_version,
    parse_cache,
    scale_to_hex,
)
from trtkld.cache.compare import json_number, tensor_diff_to_json
from trtkld.cli.args import EXIT_OK, EXIT_QUALITY
from trtkld.cli.common import CLIError

DEFAULT_TOP = 20

EPILOG = """\
The ratio is scale_A / scale_B; tensors are sorted by |ln(ratio)|, worst first. A pair with a
zero, negative, NaN or infinite scale that differs is worst of all (shown as inf).

examples:
  trtkld diff ours.cache tensorrt.cache
  trtkld diff ours.cache tensorrt.cache --top 50
  trtkld diff ours.cache tensorrt.cache --json > diff.json
  trtkld diff ours.cache tensorrt.cache --fail-above 1.05   # exit 1 if any scale is off by >5%
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="compare two TensorRT calibration caches tensor by tensor",
        description=(
            "Compare two TensorRT calibration caches (e.g. trtkld's against one TensorRT\n"
            "wrote): header differences, tensors missing on either side, and per-tensor\n"
            "scale ratios A/B sorted by disagreement."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cache_a", metavar="A.cache", help="first cache (ratios are A/B)")
    parser.add_argument("cache_b", metavar="B.cache", help="second cache")
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        metavar="N",
        help=f"show the N most different tensors and at most N names per 'only in' list "
        f"(default {DEFAULT_TOP} for text, all for --json; 0 = all)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--fail-above",
        type=float,
        default=None,
        metavar="RATIO",
        help="exit 1 if any common tensor's scales differ by more than this factor, i.e. "
        "max(A/B, B/A) > RATIO (RATIO >= 1)",
    )
    parser.add_argument(
        "--fail-on-missing",
        action="store_true",
        help="exit 1 if a tensor is in only one of the caches",
    )
    parser.set_defaults(func=run)


def _load(path: str, err: TextIO):
    # An unknown algorithm does not stop a comparison; say so once, in the CLI's style.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownAlgorithmWarning)
        cache = parse_cache(path)
    for w in caught:
        if issubclass(w.category, UnknownAlgorithmWarning):
            print(f"trtkld diff: warning: {w.message}", file=err)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cache


def _limit(items: list, top: int) -> list:
    return items if top == 0 else items[:top]


def _fmt_ratio(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _header_line(label: str, path: str, header: str, version: int, count: int) -> str:
    return f"{label}: {path}  {header} (TensorRT {format_trt_version(version)}), {count} tensors"


def format_text(diff: CacheDiff, path_a: str, path_b: str, count_a: int, count_b: int,
                top: int) -> str:
    """Human-readable report; ``top`` (0 = all) limits the listed tensors."""
    out = [
        _header_line("A", path_a, diff.header_a, diff.version_a, count_a),
        _header_line("B", path_b, diff.header_b, diff.version_b, count_b),
    ]
    if diff.header_differences:
        parts = []
        if diff.version_a != diff.version_b:
            parts.append(
                f"TensorRT version {format_trt_version(diff.version_a)} vs "
                f"{format_trt_version(diff.version_b)}"
            )
        if diff.algorithm_a != diff.algorithm_b:
            parts.append(f"algorithm {diff.algorithm_a} vs {diff.algorithm_b}")
        out.append("header differs: " + "; ".join(parts))
    else:
        out.append("headers identical")
    for label, names in (("A", diff.only_in_a), ("B", diff.only_in_b)):
        out.append(f"only in {label}: {len(names)} tensors")
        shown = _limit(names, top)
        out.extend(f"  {name}" for name in shown)
        if len(shown) < len(names):
            out.append(f"  ... and {len(names) - len(shown)} more")
    n = len(diff.common)
    out.append(f"in both: {n} tensors, {diff.num_identical} with identical scales")
    if n:
        out.append(
            f"max factor max(A/B, B/A): {_fmt_ratio(diff.max_factor)}; geometric mean A/B: "
            f"{_fmt_ratio(diff.geometric_mean_ratio())}"
        )
        shown = _limit(diff.common, top)
        out.append(f"most different {len(shown)} of {n} (|ln(A/B)| descending):")
        out.append(f"  {'ratio A/B':>12}  {'scale A':>14} {'hex A':>8}  {'scale B':>14} "
                   f"{'hex B':>8}  tensor")
        for d in shown:
            hex_a, hex_b = scale_to_hex(d.scale_a), scale_to_hex(d.scale_b)
            out.append(
                f"  {_fmt_ratio(d.ratio):>12}  {float(d.scale_a):>14.7g} {hex_a:>8}"
                f"  {float(d.scale_b):>14.7g} {hex_b:>8}  {d.name}"
            )
    return "\n".join(out) + "\n"


def to_json(diff: CacheDiff, path_a: str, path_b: str, top: int) -> dict:
    """Machine-readable report; non-finite numbers are the strings "inf", "-inf", "nan"."""
    return {
        "a": {"path": path_a, "header": diff.header_a, "version_number": diff.version_a,
              "trt_version": format_trt_version(diff.version_a), "algorithm": diff.algorithm_a},
        "b": {"path": path_b, "header": diff.header_b, "version_number": diff.version_b,
              "trt_version": format_trt_version(diff.version_b), "algorithm": diff.algorithm_b},
        "header_differences": diff.header_differences,
        "only_in_a": _limit(diff.only_in_a, top),
        "only_in_b": _limit(diff.only_in_b, top),
        "num_only_in_a": len(diff.only_in_a),
        "num_only_in_b": len(diff.only_in_b),
        "num_common": len(diff.common),
        "num_identical": diff.num_identical,
        "max_factor": json_number(diff.max_factor),
        "geometric_mean_ratio": json_number(diff.geometric_mean_ratio()),
        "tensors": [tensor_diff_to_json(d) for d in _limit(diff.common, top)],
    }


def run(args: argparse.Namespace) -> int:
    if args.top is not None and args.top < 0:
        raise CLIError(f"--top must be >= 0 (0 = all), found {args.top}")
    if args.fail_above is not None and not (args.fail_above >= 1.0 and
                                            math.isfinite(args.fail_above)):
        raise CLIError(
            f"--fail-above is a factor max(A/B, B/A) and must be finite and >= 1, found "
            f"{args.fail_above}"
        )
    a = _load(args.cache_a, sys.stderr)
    b = _load(args.cache_b, sys.stderr)
    diff = diff_caches(a, b)
    if args.json:
        top = 0 if args.top is None else args.top
        print(json.dumps(to_json(diff, args.cache_a, args.cache_b, top), indent=2,
                         ensure_ascii=False, allow_nan=False))
    else:
        top = DEFAULT_TOP if args.top is None else args.top
        sys.stdout.write(format_text(diff, args.cache_a, args.cache_b, len(a.scales),
                                     len(b.scales), top))
    status = EXIT_OK
    if args.fail_above is not None and diff.max_factor > args.fail_above:
        print(
            f"trtkld diff: scales differ by a factor up to {_fmt_ratio(diff.max_factor)} "
            f"> --fail-above {args.fail_above}",
            file=sys.stderr,
        )
        status = EXIT_QUALITY
    if args.fail_on_missing and (diff.only_in_a or diff.only_in_b):
        print(
            f"trtkld diff: {len(diff.only_in_a)} tensors only in A, {len(diff.only_in_b)} only "
            f"in B (--fail-on-missing)",
            file=sys.stderr,
        )
        status = EXIT_QUALITY
    return status
