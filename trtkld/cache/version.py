"""TensorRT version strings <-> the number in a calibration cache header.

The header of a cache is ``TRT-<N>-<Algorithm>`` where ``N`` is TensorRT's
``NV_TENSORRT_VERSION`` (see shared/docs/trt-facts.md):

- TensorRT before 10 (5.x ... 8.x): ``major*1000 + minor*100 + patch``  (8.6.1 -> 8601)
- TensorRT 10 and later:          ``major*10000 + minor*100 + patch`` (10.9.0 -> 100900)

Both encodings are injective on their valid ranges and the ranges do not overlap
(1000..9999 vs >= 100000), so a number decodes back to exactly one version.
"""
from __future__ import annotations

import logging
import operator
import re
from importlib import metadata
from typing import Optional

from trtkld.errors import CacheFormatError

logger = logging.getLogger("trtkld")

# The newest TensorRT 10.x among the real caches in shared/fixtures/trt_caches
# (mpnet_trt101303_minmax.cache). Callers that know the TensorRT they will build with (the trt/
# backend reads ``tensorrt.__version__``) must pass that instead: TensorRT may ignore or reject a
# cache whose header names another version.
DEFAULT_TRT_VERSION = "10.13.3"

# major.minor.patch with an optional fourth build field, as in ``tensorrt.__version__``
# ("10.9.0.34"); the build number is not part of the header.
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?")


def trt_version_number(version: str) -> int:
    """Header number of a TensorRT version string.

    ``"8.6.1" -> 8601``, ``"10.9.0" -> 100900``, ``"10.9.0.34" -> 100900`` (build ignored).
    Raises CacheFormatError for anything else, or for fields the encoding cannot hold
    (minor > 9 before TensorRT 10, minor or patch > 99).
    """
    if not isinstance(version, str):
        raise CacheFormatError(
            f"TensorRT version must be a string like '10.9.0', found {type(version).__name__} "
            f"{version!r}"
        )
    match = _VERSION_RE.fullmatch(version.strip())
    if match is None:
        raise CacheFormatError(
            f"TensorRT version {version!r} is not of the form MAJOR.MINOR.PATCH[.BUILD] "
            f"(e.g. '10.9.0' or '8.6.1')"
        )
    major, minor, patch = (int(g) for g in match.groups()[:3])
    if major < 1:
        raise CacheFormatError(f"TensorRT version {version!r}: major version must be >= 1")
    if patch > 99:
        raise CacheFormatError(
            f"TensorRT version {version!r}: patch {patch} does not fit the header encoding "
            f"(expected 0..99)"
        )
    if major < 10:
        if minor > 9:
            raise CacheFormatError(
                f"TensorRT version {version!r}: minor {minor} does not fit the pre-10 header "
                f"encoding major*1000+minor*100+patch (expected 0..9)"
            )
        return major * 1000 + minor * 100 + patch
    if minor > 99:
        raise CacheFormatError(
            f"TensorRT version {version!r}: minor {minor} does not fit the header encoding "
            f"major*10000+minor*100+patch (expected 0..99)"
        )
    return major * 10000 + minor * 100 + patch


def parse_trt_version_number(number: int) -> tuple[int, int, int]:
    """(major, minor, patch) of a header number; inverse of :func:`trt_version_number`.

    Raises CacheFormatError for numbers no TensorRT version encodes to (below 1000, or
    10000..99999, which would need a major version >= 10 under the pre-10 rule).
    """
    try:
        n = operator.index(number)
    except TypeError:
        raise CacheFormatError(
            f"TensorRT header version number must be an integer, found "
            f"{type(number).__name__} {number!r}"
        ) from None
    if isinstance(number, bool):
        raise CacheFormatError(
            f"TensorRT header version number must be an integer, found {number!r}"
        )
    if n >= 100000:
        return n // 10000, (n // 100) % 100, n % 100
    if 1000 <= n < 10000:
        return n // 1000, (n // 100) % 10, n % 100
    raise CacheFormatError(
        f"TensorRT header version number {n} encodes no TensorRT version (expected 1000..9999 "
        f"for TensorRT < 10, e.g. 8601, or >= 100000 for TensorRT >= 10, e.g. 100900)"
    )


def format_trt_version(number: int) -> str:
    """Version string of a header number, for display.

    ``100900 -> "10.9.0"``, ``8601 -> "8.6.1"``; CacheFormatError as parse_trt_version_number.
    """
    major, minor, patch = parse_trt_version_number(number)
    return f"{major}.{minor}.{patch}"


# Distributions that carry TensorRT's Python bindings; read through package metadata so that
# finding the version never imports tensorrt (only trtkld/trt/_backend.py may).
_TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


def installed_tensorrt_version() -> Optional[str]:
    """Version of the installed TensorRT Python package, or None (no import of tensorrt)."""
    for dist in _TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_trt_version(requested: Optional[str] = None) -> str:
    """``requested`` (validated), else the installed TensorRT's major.minor.patch, else
    :data:`DEFAULT_TRT_VERSION` with a warning telling the user to pass one."""
    if requested:
        trt_version_number(requested)  # validates, raising CacheFormatError on nonsense
        return requested
    installed = installed_tensorrt_version()
    if installed:
        return ".".join(installed.split(".")[:3])
    logger.warning(
        "TensorRT is not installed here: writing the cache header for TensorRT %s; pass "
        "--trt-version (trt_version=) to match the TensorRT that will read the cache",
        DEFAULT_TRT_VERSION,
    )
    return DEFAULT_TRT_VERSION
