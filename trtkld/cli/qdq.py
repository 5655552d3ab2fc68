"""`trtkld qdq` (being written)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("qdq", help="(not yet available)")
