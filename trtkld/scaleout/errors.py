"""Errors of scale-out collection (all :class:`~trtkld.errors.TrtkldError`: one line in the CLI)."""
from __future__ import annotations

from trtkld.errors import TrtkldError


class ScaleOutError(TrtkldError, RuntimeError):
    """The cluster cannot be reached or used as asked, or its workers differ from the driver."""


class RayUnavailableError(ScaleOutError, ImportError):
    """``ray`` is not installed (it is the optional ``ray`` extra of trtkld)."""


class ShardFailedError(ScaleOutError):
    """A shard's task still failed after Ray's retries; the message names the shard's files."""
