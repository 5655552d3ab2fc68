"""`trtkld eval` (being written)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("eval", help="(not yet available)")
