"""`trtkld build` (being written)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("build", help="(not yet available)")
