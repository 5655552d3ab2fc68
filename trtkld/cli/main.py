"""Entry point of the ``trtkld`` console script: dispatches to one module per sub-command."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from trtkld._version import __version__
from trtkld.cli.args import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUALITY,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
)
from trtkld.cli.common import QualityError
from trtkld.errors import TrtkldError

# Each module registers its own sub-parser; the order here is the order shown in --help.
COMMAND_MODULES = (
    "trtkld.cli.calibrate",
    "trtkld.cli.diff",
    "trtkld.cli.qdq",
    "trtkld.cli.eval",
    "trtkld.cli.report",
    "trtkld.cli.build",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtkld",
        description=(
            "Reproducible INT8 calibration for TensorRT: collect activation histograms, run a "
            "selectable KL-divergence threshold search (ppq, nvidia, modelopt) or a baseline, "
            "and write a TensorRT calibration cache or a Q/DQ ONNX model."
        ),
        epilog=(
            "examples:\n"
            "  trtkld calibrate --demo\n"
            "  trtkld calibrate model.onnx --data calib_data/ --method ppq --out model.cache\n"
            "  trtkld diff ours.cache tensorrt.cache\n"
            "run 'trtkld COMMAND --help' for each command's options.\n\n"
            + EXIT_STATUS_HELP
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trtkld {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():   # one convention, shown by every --help
        command.epilog = ((command.epilog or "").rstrip("\n") + "\n\n" + EXIT_STATUS_HELP).lstrip()
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    logging.basicConfig(level=logging.INFO, format="trtkld: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or EXIT_OK)
    except QualityError as exc:
        print(f"trtkld {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_QUALITY
    except TrtkldError as exc:
        print(f"trtkld {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"trtkld {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
