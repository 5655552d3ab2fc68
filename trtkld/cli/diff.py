"""`trtkld diff` (being written)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("diff", help="(not yet available)")
