"""TensorRT calibration cache: the ``TRT-<N>-<Algorithm>`` text file TensorRT reads and writes.

Public API (docs/architecture.md, ``cache/``)::

    from trtkld.cache import (CalibrationCache, parse_cache, write_cache,
                              trt_version_number, DEFAULT_TRT_VERSION)
"""
from __future__ import annotations

from trtkld.cache.compare import CacheDiff, TensorScaleDiff, diff_caches
from trtkld.cache.format import (
    KNOWN_ALGORITHMS,
    CalibrationCache,
    UnknownAlgorithmWarning,
    float32_bits,
    float32_from_bits,
    parse_cache,
    scale_to_hex,
    write_cache,
)
from trtkld.cache.version import (
    DEFAULT_TRT_VERSION,
    format_trt_version,
    installed_tensorrt_version,
    parse_trt_version_number,
    resolve_trt_version,
    trt_version_number,
)

__all__ = [
    "DEFAULT_TRT_VERSION",
    "KNOWN_ALGORITHMS",
    "CacheDiff",
    "CalibrationCache",
    "TensorScaleDiff",
    "UnknownAlgorithmWarning",
    "diff_caches",
    "float32_bits",
    "float32_from_bits",
    "format_trt_version",
    "installed_tensorrt_version",
    "parse_cache",
    "parse_trt_version_number",
    "resolve_trt_version",
    "scale_to_hex",
    "trt_version_number",
    "write_cache",
]
