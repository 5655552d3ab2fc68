"""Entry point of the ``trtkld`` console script: dispatches to one module per sub-command."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Optional

from trtkld._version import __version__
from trtkld.cli.common import CLIError  # noqa: F401  (re-exported for sub-commands)
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
            "run 'trtkld COMMAND --help' for each command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trtkld {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument(
            "--verbose", "-v", action="store_true",
            help="list every tensor behind grouped warnings, and debug messages",
        )
    return parser


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as `yes | head -1` reports for `yes`


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="trtkld: %(levelname)s: %(message)s")
    logging.getLogger("trtkld").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (2: an error, printed as one line; 130:
    interrupted; 141: stdout closed early, e.g. by ``| head``)."""
    _configure_logging("-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:]))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        _configure_logging(args.verbose)
        try:
            return int(args.func(args) or 0)
        except TrtkldError as exc:
            print(f"trtkld {args.command}: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        # Every file is written atomically (temp file + rename), so nothing half-written stays.
        print("trtkld: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit does not raise BrokenPipeError again
    (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a fd
        pass


if __name__ == "__main__":
    sys.exit(main())
