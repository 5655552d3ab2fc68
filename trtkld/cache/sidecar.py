"""Sidecar metadata next to a calibration cache: what made it, so it is never reused blindly.

TensorRT's cache header only records the TensorRT version and the algorithm. Whether the scales
came from ``ppq``, ``nvidia`` or ``modelopt`` (and with which options, collector and trtkld
version) is written to ``<cache>.trtkld.json``; :func:`reuse_problem` compares a cache and its
sidecar with what a calibrator is about to produce and says why they differ, or ``None``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from trtkld._io import atomic_write
from trtkld._version import __version__
from trtkld.errors import CacheFormatError

PathLike = Union[str, "os.PathLike[str]"]
SIDECAR_SUFFIX = ".trtkld.json"


def sidecar_path(cache_file: PathLike) -> Path:
    """``model.cache`` -> ``model.cache.trtkld.json``."""
    return Path(os.fspath(cache_file) + SIDECAR_SUFFIX)


def tensorrt_cache_path(cache_file: PathLike) -> Path:
    """Where TensorRT's own cache goes: ``model.cache`` -> ``model.tensorrt.cache``."""
    path = Path(cache_file)
    suffix = path.suffix or ".cache"
    return path.with_name(path.stem + ".tensorrt" + suffix)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Atomic write of ``data`` to ``path``; OS errors become CacheFormatError naming the file."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise CacheFormatError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON so that tuples/lists and numpy scalars compare equal after a load.
    return json.loads(json.dumps(dict(options), sort_keys=True, default=str))


def make_metadata(
    *, method: str, options: Mapping[str, Any], collector: str, cache_bytes: bytes
) -> dict[str, Any]:
    """The sidecar content for a cache just written (``sha256`` ties it to those bytes)."""
    return {
        "trtkld_version": __version__,
        "method": method,
        "options": _jsonable(options),
        "collector": collector,
        "sha256": hashlib.sha256(cache_bytes).hexdigest(),
    }


def write_metadata(cache_file: PathLike, metadata: Mapping[str, Any]) -> None:
    text = json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(sidecar_path(cache_file), text.encode("utf-8"))


def read_metadata(cache_file: PathLike) -> Optional[dict[str, Any]]:
    """The sidecar of ``cache_file``, ``None`` if there is none; CacheFormatError if corrupt."""
    path = sidecar_path(cache_file)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheFormatError(f"cache metadata {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise CacheFormatError(f"cache metadata {path}: expected a JSON object, found {data!r}")
    return data


def metadata_problem(
    metadata: Optional[Mapping[str, Any]],
    *,
    cache_file: PathLike,
    cache_bytes: bytes,
    method: str,
    options: Mapping[str, Any],
    collector: str,
) -> Optional[str]:
    """Why the sidecar does not vouch for reusing ``cache_bytes`` as ``method``; None if it does."""
    if metadata is None:
        return (
            f"it has no metadata file {sidecar_path(cache_file).name}, so the method that made "
            f"it is unknown"
        )
    if metadata.get("sha256") != hashlib.sha256(cache_bytes).hexdigest():
        return "the cache file changed after trtkld wrote it (its sha256 differs from the metadata)"
    if metadata.get("method") != method:
        return f"it was made with method {metadata.get('method')!r}, {method!r} was asked for"
    if metadata.get("options") != _jsonable(options):
        return (
            f"it was made with search options {metadata.get('options')!r}, "
            f"{_jsonable(options)!r} were asked for"
        )
    if metadata.get("collector") != collector:
        return (
            f"its histograms came from the {metadata.get('collector')!r} collector, "
            f"{collector!r} was asked for"
        )
    if metadata.get("trtkld_version") != __version__:
        return (
            f"it was written by trtkld {metadata.get('trtkld_version')}, this is trtkld "
            f"{__version__}"
        )
    return None
