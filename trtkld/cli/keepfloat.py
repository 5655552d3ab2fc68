"""Option groups for sensitive layers kept in higher precision (calibrate / qdq / eval).

Same pattern as :mod:`trtkld.cli.args`: each group adds its options once and turns them into
what the library takes. :class:`KeepFloatNamesArgs` (``--keep-float-names``, qdq),
:class:`KeepFloatArgs` (``--keep-float K`` ranked on calibration samples, calibrate) and
:class:`SensitivityArgs` (``--sensitivity`` on evaluation data, eval).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Optional

from trtkld.cli.args import ArgGroup, split_list
from trtkld.cli.common import CLIError

METRIC_CHOICES = ("sqnr", "cosine", "top1")


def check_names(names: Sequence[str], quantizable: Sequence[str], option: str) -> None:
    """CLIError naming the tensors of ``names`` that no weighted op reads as an activation."""
    unknown = [n for n in names if n not in set(quantizable)]
    if unknown:
        shown = ", ".join(quantizable[:8]) + (" ..." if len(quantizable) > 8 else "")
        raise CLIError(
            f"{option}: {', '.join(repr(n) for n in unknown)} is not an activation input of a "
            f"quantized op; expected names like: {shown}"
        )


def _names(args: argparse.Namespace) -> list[str]:
    """``--keep-float-names`` as a list (first copy of each name, order kept)."""
    out: list[str] = []
    for name in split_list(getattr(args, "keep_float_names", None)):
        if name not in out:
            out.append(name)
    return out


def _add_names(parser) -> None:
    parser.add_argument(
        "--keep-float-names", metavar="A,B", default=None,
        help="activation tensors to keep in float (comma-separated ONNX names): left out of "
        "the cache / Q/DQ model, so TensorRT runs the layers reading them in FP16/FP32",
    )


def _add_measure(parser, *, samples_default: Optional[int]) -> None:
    parser.add_argument(
        "--sensitivity-samples", type=int, default=samples_default, metavar="N",
        help="samples the sensitivity is measured on (the first N; default: "
        + ("all" if samples_default is None else "%(default)s") + ")",
    )
    parser.add_argument("--sensitivity-metric", choices=METRIC_CHOICES, default="sqnr",
                        help="fidelity metric: worst output SQNR (dB), worst output cosine, or "
                        "top-1 agreement of a classifier output (default: %(default)s)")


def _samples(data, limit: Optional[int]) -> list:
    from trtkld.fidelity import materialize

    if limit is not None and limit < 1:
        raise CLIError(f"--sensitivity-samples must be at least 1, found {limit}")
    samples = materialize(data)
    return samples if limit is None else samples[:limit]


def _analyse(model: str, scales, samples: list, k: int, *, metric: str,
             op_types: Sequence[str], per_channel: bool, quiet: bool):
    from trtkld.fidelity import sensitivity_analysis

    progress = None
    if not quiet:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="sensitivity", unit="tensor", leave=False)
    return sensitivity_analysis(model, scales, samples, keep_float=k, metric=metric,
                                op_types=op_types, per_channel=per_channel, progress=progress)


class KeepFloatNamesArgs(ArgGroup):
    """``--keep-float-names A,B`` (qdq): plus, with ``--cache``, the sidecar's ``keep_float``."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        _add_names(parser)

    def parse(self, args: argparse.Namespace, model: str, op_types: Sequence[str],
              cache: Optional[str] = None) -> list[str]:
        from trtkld.qdq import quantizable_activations

        names = _names(args)
        if names:
            check_names(names, quantizable_activations(model, op_types), "--keep-float-names")
        if cache:
            from trtkld.cache import sidecar

            recorded = (sidecar.read_metadata(cache) or {}).get("keep_float") or []
            names += [n for n in recorded if isinstance(n, str) and n not in names]
        return names


class KeepFloatArgs(ArgGroup):
    """``--keep-float K``, ``--keep-float-names`` and the measurement options (calibrate)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "sensitive layers",
            "Rank the inputs of the weighted ops by the output damage when only that tensor is "
            "quantized (on calibration samples, never evaluation data) and keep the K worst in "
            "float. Costs (tensors + K + 2) model runs per sample.",
        )
        group.add_argument("--keep-float", type=int, default=0, metavar="K",
                           help="keep the K most sensitive tensors in float (default: "
                           "%(default)s)")
        _add_names(group)
        _add_measure(group, samples_default=8)

    def apply(self, args: argparse.Namespace, cal: Any, data,
              op_types: Sequence[str]) -> None:
        """Leave the kept tensors out of each method's thresholds in ``cal`` (a
        :class:`trtkld.calibration.Calibration`) and record them in its sidecar (``keep_float``).

        Tensors that ``--include``/``--exclude`` left out are recorded too, so that
        ``trtkld qdq --cache`` keeps them float instead of taking the cache for another model's.
        """
        names = _names(args)
        k = args.keep_float
        if k < 0:
            raise CLIError(f"--keep-float must be 0 or more, found {k}")
        filtered = bool(getattr(args, "include", None) or getattr(args, "exclude", None))
        if not names and not k and not filtered:
            return
        if k and (cal.model is None or data is None):
            raise CLIError("--keep-float K runs the model on calibration samples; it cannot "
                           "start from --from-histograms (give the tensors with "
                           "--keep-float-names)")
        quantizable: list[str] = []
        if cal.model is not None:
            from trtkld.qdq import quantizable_activations

            quantizable = quantizable_activations(cal.model, op_types)
            check_names(names, quantizable, "--keep-float-names")
        samples = _samples(data, args.sensitivity_samples) if k else []
        for method in cal.methods:
            chosen = list(names)
            if k:
                report = _analyse(cal.model, cal.scales(method), samples, k,
                                  metric=args.sensitivity_metric, op_types=op_types,
                                  per_channel=True, quiet=args.quiet)
                print(f"{method}: {report.format(top=k)}")
                chosen += [t for t in report.top(k) if t not in chosen]
            results = cal.results[method]
            if filtered:
                chosen += [t for t in quantizable if t not in results and t not in chosen]
            if not chosen:
                continue
            drop = set(chosen)
            cal.replace_results(
                method, {n: r for n, r in results.items() if n not in drop},
                findings={n: f for n, f in cal.findings[method].items() if n not in drop},
                sidecar={"keep_float": chosen})


class SensitivityArgs(ArgGroup):
    """``--sensitivity`` and its options (eval): measured on the evaluation data."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "sensitive layers",
            "--sensitivity: for each input of a weighted op, the output fidelity on the "
            "evaluation data when only that tensor (and its consumers' weights) is quantized, "
            "worst first; then the top K kept in float cumulatively with the fidelity after "
            "each. Costs (tensors + K + 2) model runs per sample.",
        )
        group.add_argument("--sensitivity", action="store_true",
                           help="add the sensitive-layer analysis (see above)")
        group.add_argument("--sensitivity-top", type=int, default=5, metavar="K",
                           help="tensors kept in float cumulatively (default: %(default)s)")
        group.add_argument("--sensitivity-method", metavar="METHOD",
                           help="whose scales are analysed (default: the first --method)")
        _add_measure(group, samples_default=None)

    def run(self, args: argparse.Namespace, model: str, evaluation, report: Any,
            op_types: Sequence[str], names: Sequence[str]):
        """The report of ``--sensitivity-method``'s scales, or None without ``--sensitivity``.

        ``report`` is the eval report (its ``methods`` carry each method's written scales).
        """
        if not args.sensitivity:
            return None
        if args.sensitivity_top < 0:
            raise CLIError(f"--sensitivity-top must be 0 or more, found {args.sensitivity_top}")
        chosen = args.sensitivity_method or (names[0] if names else None)
        by_name = {m.name: m for m in report.methods}
        if chosen not in by_name:
            raise CLIError(f"--sensitivity-method {chosen!r} was not evaluated; expected one of "
                           f"{', '.join(by_name)}")
        samples = _samples(evaluation, args.sensitivity_samples)
        print(f"sensitivity of {chosen}'s scales:")
        return _analyse(model, by_name[chosen].scales, samples, args.sensitivity_top,
                        metric=args.sensitivity_metric, op_types=op_types,
                        per_channel=not args.per_tensor_weights, quiet=args.quiet)
