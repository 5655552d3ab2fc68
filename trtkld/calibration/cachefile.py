"""The one way trtkld writes a calibration cache: the TensorRT cache, then its sidecar.

``trtkld calibrate``, :class:`trtkld.calibration.Calibration` and the TensorRT calibrator all
write through :func:`write_calibration_cache`, so a cache is always accompanied by the same
record of what made it (``<cache>.trtkld.json``: method, search options, collector, trtkld
version, the cache's sha256, and the method behind each tensor where it is not the cache's own).
Each file is written atomically (``trtkld._io``); the sidecar is written after the cache and
names its sha256, so a cache whose sidecar is stale is never reused.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

from trtkld.cache import CalibrationCache, format_trt_version, resolve_trt_version, sidecar
from trtkld.cache.version import installed_tensorrt_version
from trtkld.errors import CacheFormatError
from trtkld.pipeline import results_to_cache
from trtkld.search import SearchResult

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_ALGORITHM = "EntropyCalibration2"


def results_cache(
    results: Mapping[str, SearchResult],
    *,
    trt_version: Optional[str] = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> CalibrationCache:
    """A TensorRT calibration cache holding each result's scale, in ``results`` order.

    ``trt_version`` None: the installed TensorRT's, else the default with a warning
    (:func:`trtkld.cache.resolve_trt_version`).
    """
    return results_to_cache(results, trt_version=resolve_trt_version(trt_version),
                            algorithm=algorithm)


def tensor_methods(method: str, results: Mapping[str, SearchResult]) -> dict[str, str]:
    """Tensor -> the method that actually chose its threshold, for tensors where that is not
    ``method`` (``auto``'s winners, per-tensor overrides); results order."""
    out = {}
    for name, result in results.items():
        used = result.chosen_method or result.method
        if used != method:
            out[name] = used
    return out


def write_calibration_cache(
    path: PathLike,
    results: Mapping[str, SearchResult],
    *,
    method: str,
    options: Optional[Mapping[str, Any]] = None,
    trt_version: Optional[str] = None,
    algorithm: str = DEFAULT_ALGORITHM,
    collector: str = "onnxruntime",
    extra: Optional[Mapping[str, Any]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
) -> bytes:
    """Write the cache of ``results`` to ``path`` and its sidecar; returns the cache bytes.

    ``options``: the search options that made ``results`` as they should be recorded (what a
    later reuse check compares against). ``extra``: more sidecar fields (e.g. how a measured
    choice was made); they must not shadow the standard ones. Raises CacheFormatError naming
    the file when either write fails; the previous files are then left as they were.
    ``provenance``: model/data fingerprints (:func:`trtkld.pipeline.fingerprints`); the TensorRT
    version of the header and the installed one are added here.

    Both files are written as one pair (:func:`trtkld.cache.sidecar.write_cache_and_metadata`):
    the sidecar's sha256 is that of the bytes written, under a lock on the folder, so two runs
    writing the same path never leave one's cache with the other's sidecar.
    """
    cache = results_cache(results, trt_version=trt_version, algorithm=algorithm)
    written = cache.to_bytes()     # validated before anything is written
    metadata = sidecar.make_metadata(
        method=method, options=dict(options or {}), collector=collector,
        provenance=sidecar.make_provenance(
            model_sha256=(provenance or {}).get("model_sha256"),
            data={"data_sha256": (provenance or {}).get("data_sha256"),
                  **dict((provenance or {}).get("data") or {})},
            trt_version=format_trt_version(cache.version_number),
            tensorrt_installed=installed_tensorrt_version(),
        ),
    )
    per_tensor = tensor_methods(method, results)
    if per_tensor:
        metadata["tensor_methods"] = per_tensor
    for key, value in (extra or {}).items():
        if key in metadata or key == "sha256":  # sha256 is filled from the bytes written
            raise CacheFormatError(f"{os.fspath(path)}: sidecar field {key!r} is written by "
                                   "trtkld itself and cannot be given as extra")
        metadata[key] = value
    sidecar.write_cache_and_metadata(path, written, metadata)
    return written
