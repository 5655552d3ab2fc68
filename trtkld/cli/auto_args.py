"""CLI options of the output-measured ``auto`` (shared by ``calibrate`` and ``eval``)."""
from __future__ import annotations

import argparse

from trtkld.cli.common import CLIError


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    """``--auto-by``, ``--metric``, ``--auto-folds``, ``--auto-heldout``,
    ``--auto-no-per-tensor``."""
    group = parser.add_argument_group(
        "auto (output-measured)",
        "--method auto writes the candidate rule (ppq, nvidia, modelopt, mse, max, percentile "
        "99.99/99.999, per-tensor histogram SQNR, ONNX Runtime's entropy and percentile, or a "
        "per-tensor mix chosen at each consumer op's output) whose Q/DQ model is most "
        "faithful to FP32 on calibration samples held out from the histograms. The sidecar "
        "lists every candidate's held-out score.",
    )
    group.add_argument("--auto-by", choices=["output", "histogram"], default="output",
                       help="output: measured output fidelity (above); histogram: each tensor "
                       "gets the rule with the best histogram SQNR, no model output measured "
                       "(the only choice from saved histograms) (default: %(default)s)")
    group.add_argument("--metric", choices=["sqnr", "top1", "cosine"],
                       help="what auto maximises on held-out calibration samples (default: "
                       "top1 for a classifier-shaped [N, C] first output, else sqnr; ties "
                       "broken by output SQNR)")
    group.add_argument("--auto-folds", type=int, default=3, metavar="K",
                       help="held-out folds of the calibration batches (default: %(default)s)")
    group.add_argument("--auto-heldout", type=int, default=16, metavar="N",
                       help="calibration samples auto scores each candidate on (at most; "
                       "default: %(default)s)")
    group.add_argument("--auto-no-per-tensor", action="store_true",
                       help="do not try the per-tensor (consumer-output) mix")


def auto_options_from_args(args: argparse.Namespace):
    """:class:`trtkld.calibration.auto.AutoOptions` from the parsed options (None with
    ``--auto-by histogram``)."""
    from trtkld.calibration.auto import AutoOptions
    from trtkld.errors import DataError

    if args.auto_by == "histogram":
        return None
    try:
        return AutoOptions(folds=args.auto_folds, heldout=args.auto_heldout, metric=args.metric,
                           per_tensor=not args.auto_no_per_tensor)
    except DataError as exc:
        raise CLIError(str(exc)) from exc
