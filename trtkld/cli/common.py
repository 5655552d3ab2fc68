"""Errors shared by the sub-commands (the option groups themselves live in ``cli/args.py``).

``main`` turns them into the exit statuses documented in ``trtkld --help``: a
:class:`QualityError` exits 1, any other :class:`~trtkld.errors.TrtkldError` (this module's
:class:`CLIError` included) exits 2.
"""
from __future__ import annotations

from trtkld.errors import TrtkldError


class CLIError(TrtkldError):
    """An error in the command line itself; printed as one line without a traceback."""


class QualityError(TrtkldError):
    """The run worked, but a quality check the user asked for (``--strict``) failed."""
