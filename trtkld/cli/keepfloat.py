"""Options shared by calibrate / qdq / eval for sensitive layers kept in higher precision."""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Optional

from trtkld.cli.common import CLIError

METRIC_CHOICES = ("sqnr", "cosine", "top1")


def split_names(text: Optional[str]) -> list[str]:
    """``a,b`` -> [a, b] (tensor names; empty items dropped, order and first copy kept)."""
    out: list[str] = []
    for part in (text or "").split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


def add_keep_float_names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-float-names", metavar="A,B", default=None,
        help="activation tensors to keep in float (comma-separated ONNX names): left out of "
        "the cache / Q/DQ model, so TensorRT runs the layers reading them in FP16/FP32",
    )


def add_keep_float_ranking(parser: argparse.ArgumentParser) -> None:
    """``--keep-float K`` and how the ranking is measured (calibrate)."""
    group = parser.add_argument_group(
        "sensitive layers",
        "Rank the inputs of the weighted ops by the output damage when only that tensor is "
        "quantized (on calibration samples, never evaluation data) and keep the K worst in "
        "float. Costs (tensors + K + 2) model runs per sample.",
    )
    group.add_argument("--keep-float", type=int, default=0, metavar="K",
                       help="keep the K most sensitive tensors in float (default: %(default)s)")
    add_keep_float_names(group)
    add_sensitivity_measure(group, samples_default=8)


def add_sensitivity_measure(parser, *, samples_default: Optional[int]) -> None:
    parser.add_argument(
        "--sensitivity-samples", type=int, default=samples_default, metavar="N",
        help="samples the sensitivity is measured on (the first N; default: "
        + ("all" if samples_default is None else "%(default)s") + ")",
    )
    parser.add_argument("--sensitivity-metric", choices=METRIC_CHOICES, default="sqnr",
                        help="fidelity metric: worst output SQNR (dB), worst output cosine, or "
                        "top-1 agreement of a classifier output (default: %(default)s)")


def check_names(names: Sequence[str], quantizable: Sequence[str], option: str) -> None:
    """CLIError naming the tensors of ``names`` that no weighted op reads as an activation."""
    unknown = [n for n in names if n not in set(quantizable)]
    if unknown:
        shown = ", ".join(quantizable[:8]) + (" ..." if len(quantizable) > 8 else "")
        raise CLIError(
            f"{option}: {', '.join(repr(n) for n in unknown)} is not an activation input of a "
            f"quantized op; expected names like: {shown}"
        )


def sensitivity_samples(data, limit: Optional[int]) -> list:
    """The first ``limit`` (all if None) real samples of ``data`` as feed dicts."""
    from trtkld.fidelity import materialize

    if limit is not None and limit < 1:
        raise CLIError(f"--sensitivity-samples must be at least 1, found {limit}")
    samples = materialize(data)
    return samples if limit is None else samples[:limit]


def rank_and_keep(model: str, scales: Mapping[str, float], samples: list, k: int, *,
                  metric: str, op_types: Sequence[str], per_channel: bool = True,
                  quiet: bool = False):
    """Run the sensitivity analysis; returns its report (``report.top(k)`` are the tensors)."""
    from trtkld.fidelity import sensitivity_analysis

    progress = None
    if not quiet:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="sensitivity", unit="tensor", leave=False)
    return sensitivity_analysis(model, scales, samples, keep_float=k, metric=metric,
                                op_types=op_types, per_channel=per_channel, progress=progress)


def apply_to_outcomes(args: argparse.Namespace, model: Optional[str], data,
                      outcomes: dict, op_types: Sequence[str]) -> dict[str, list[str]]:
    """``calibrate --keep-float K / --keep-float-names``: drop those tensors from each method's
    cache (in place); returns method -> the tensors kept in float (for the sidecar)."""
    import dataclasses

    names = split_names(args.keep_float_names)
    k = args.keep_float
    if k < 0:
        raise CLIError(f"--keep-float must be 0 or more, found {k}")
    filtered = bool(getattr(args, "include", None) or getattr(args, "exclude", None))
    if not names and not k and not filtered:
        return {}
    if k and (model is None or data is None):
        raise CLIError("--keep-float K runs the model on calibration samples; it cannot start "
                       "from --from-histograms (give the tensors with --keep-float-names)")
    quantizable: list[str] = []
    if model is not None:
        from trtkld.qdq import quantizable_activations

        quantizable = quantizable_activations(model, op_types)
        check_names(names, quantizable, "--keep-float-names")
    samples = sensitivity_samples(data, args.sensitivity_samples) if k else []
    kept: dict[str, list[str]] = {}
    for method, outcome in outcomes.items():
        chosen = list(names)
        if k:
            report = rank_and_keep(model, outcome.cache.scales, samples, k,
                                   metric=args.sensitivity_metric, op_types=op_types,
                                   quiet=args.quiet)
            print(f"{method}: {report.format(top=k)}")
            chosen += [t for t in report.top(k) if t not in chosen]
        outcome.cache = dataclasses.replace(
            outcome.cache,
            scales={n: s for n, s in outcome.cache.scales.items() if n not in set(chosen)})
        if filtered:
            # Tensors --include/--exclude left out are float on request too: recorded so that
            # qdq --cache does not take them for a cache made for another model.
            chosen += [t for t in quantizable if t not in outcome.cache.scales and t not in chosen]
        if chosen:
            kept[method] = chosen
    return kept
