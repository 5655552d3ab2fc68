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
from trtkld.cli.args import (
    EXIT_BROKEN_PIPE,
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


class _OneLineErrorParser(argparse.ArgumentParser):
    """A sub-command parser whose usage errors are one line, like every other trtkld error
    (``trtkld calibrate: error: argument --percentile: ...``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_OneLineErrorParser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():   # one convention, shown by every --help
        command.epilog = ((command.epilog or "").rstrip("\n") + "\n\n" + EXIT_STATUS_HELP).lstrip()
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.add_argument(
            "--verbose", "-v", action="store_true",
            help="list every tensor behind grouped warnings (one line per kind by default), "
            "and debug messages",
        )
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="trtkld: %(levelname)s: %(message)s")
    logging.getLogger("trtkld").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status of ``EXIT_STATUS_HELP``."""
    words = list(sys.argv[1:] if argv is None else argv)
    _configure_logging("-v" in words or "--verbose" in words)  # parse-time warnings too
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code == EXIT_USAGE:   # a usage error, already printed in one line
                return EXIT_USAGE
            raise                        # --help / --version: exit as argparse does
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        _configure_logging(args.verbose)
        try:
            return int(args.func(args) or EXIT_OK)
        except QualityError as exc:
            print(f"trtkld {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_QUALITY
        except TrtkldError as exc:
            print(f"trtkld {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    except KeyboardInterrupt:
        # Every file is written atomically (temp file + rename): nothing is left half-written.
        print("trtkld: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Every output file is written before tables are printed: nothing is lost.
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
