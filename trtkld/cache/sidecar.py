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

from trtkld._io import atomic_write, locked_folder, read_regular_file
from trtkld._version import __version__
from trtkld.errors import CacheFormatError

PathLike = Union[str, "os.PathLike[str]"]
SIDECAR_SUFFIX = ".trtkld.json"
MAX_SIDECAR_BYTES = 64 * 2**20


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
    *,
    method: str,
    options: Mapping[str, Any],
    collector: str,
    cache_bytes: Optional[bytes] = None,
    provenance: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The sidecar content for a cache (``sha256`` ties it to the cache's bytes).

    ``provenance`` (see :func:`make_provenance`) records what the cache was made from: the
    model's and the data's sha256, the preprocessing, the TensorRT versions. ``cache_bytes`` may
    be left out when :func:`write_cache_and_metadata` fills ``sha256`` from the bytes it writes.
    """
    metadata: dict[str, Any] = {
        "trtkld_version": __version__,
        "method": method,
        "options": _jsonable(options),
        "collector": collector,
    }
    if cache_bytes is not None:
        metadata["sha256"] = hashlib.sha256(cache_bytes).hexdigest()
    if provenance:
        metadata.update(_jsonable(provenance))
    return metadata


def make_provenance(
    *,
    model_sha256: Optional[str],
    data: Optional[Mapping[str, Any]] = None,
    trt_version: Optional[str] = None,
    tensorrt_installed: Optional[str] = None,
) -> dict[str, Any]:
    """Provenance fields of a sidecar.

    model_sha256: sha256 of the ONNX model file (None when the cache came from saved
    histograms). data: :meth:`trtkld.data.CalibrationData.fingerprint` (``data_sha256``,
    preprocessing, sample count) or, for histograms, ``{"data_sha256": ..., "histograms":
    [...]}``. trt_version: the TensorRT version the cache header is for; tensorrt_installed:
    the TensorRT found where the cache was made (None: not installed).
    """
    fields: dict[str, Any] = {"model_sha256": model_sha256}
    data = dict(data or {})
    fields["data_sha256"] = data.pop("data_sha256", None)
    fields["data"] = data
    fields["trt_version"] = trt_version
    fields["tensorrt_installed"] = tensorrt_installed
    return fields


def provenance_problem(
    metadata: Mapping[str, Any],
    *,
    model_sha256: Optional[str] = None,
    data_fingerprint: Optional[Mapping[str, Any]] = None,
) -> Optional[str]:
    """Why a cache recorded in ``metadata`` was not made from this model / this data; None if
    the fingerprints match. A fingerprint passed as None is not checked (e.g. a rebuild from
    the cache alone, without data); a sidecar without the field never matches one given.
    """
    if model_sha256 is not None:
        recorded = metadata.get("model_sha256")
        if recorded is None:
            return "its metadata records no model fingerprint (model_sha256), so it may come " \
                   "from another model"
        if recorded != model_sha256:
            return (
                f"the model changed since the cache was made (model sha256 {recorded[:12]}... "
                f"recorded, {model_sha256[:12]}... now)"
            )
    if data_fingerprint is not None:
        recorded = metadata.get("data_sha256")
        wanted = data_fingerprint.get("data_sha256")
        if recorded is None:
            return "its metadata records no data fingerprint (data_sha256), so it may come " \
                   "from other calibration data"
        if recorded != wanted:
            return (
                f"the calibration data differ from the data the cache was made from (data "
                f"sha256 {str(recorded)[:12]}... recorded, {str(wanted)[:12]}... now)"
            )
        before = (metadata.get("data") or {}).get("preprocessing")
        now = _jsonable({"p": data_fingerprint.get("preprocessing")})["p"]
        if before != now:
            return (
                f"the preprocessing differs from the cache's: {before!r} recorded, {now!r} now"
            )
    return None


def write_metadata(cache_file: PathLike, metadata: Mapping[str, Any]) -> None:
    text = json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(sidecar_path(cache_file), text.encode("utf-8"))


def write_cache_and_metadata(
    cache_file: PathLike, cache_bytes: bytes, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """Write a cache and its sidecar as one pair; returns the sidecar content written.

    The sidecar's ``sha256`` is the hash of ``cache_bytes`` as written (never a re-read of the
    path), and both files are written under an exclusive lock on their folder
    (:func:`trtkld._io.locked_folder`), so two runs writing the same cache leave one run's
    complete pair and a reader (:func:`read_cache_and_metadata`) never sees a mix.
    """
    path = os.fspath(cache_file)
    with locked_folder(path):
        try:
            sha256 = atomic_write(path, cache_bytes)
        except OSError as exc:
            raise CacheFormatError(f"cannot write {path}: {exc.strerror or exc}") from exc
        recorded = {**dict(metadata), "sha256": sha256}
        write_metadata(path, recorded)
    return recorded


def read_cache_and_metadata(
    cache_file: PathLike, *, limit: Optional[int] = None
) -> tuple[bytes, Optional[dict[str, Any]]]:
    """A cache's bytes and its sidecar (None if absent), read together under a shared lock."""
    from trtkld.cache.format import MAX_CACHE_BYTES

    with locked_folder(cache_file, exclusive=False):
        raw = read_regular_file(cache_file, limit=limit or MAX_CACHE_BYTES,
                                what="calibration cache", error=CacheFormatError)
        return raw, read_metadata(cache_file)


def read_metadata(cache_file: PathLike) -> Optional[dict[str, Any]]:
    """The sidecar of ``cache_file``, ``None`` if there is none; CacheFormatError if corrupt."""
    path = sidecar_path(cache_file)
    if not os.path.lexists(path):
        return None
    raw = read_regular_file(path, limit=MAX_SIDECAR_BYTES, what="cache metadata",
                            error=CacheFormatError)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
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
    model_sha256: Optional[str] = None,
    data_fingerprint: Optional[Mapping[str, Any]] = None,
) -> Optional[str]:
    """Why the sidecar does not vouch for reusing ``cache_bytes`` as ``method``; None if it does.

    With ``model_sha256`` / ``data_fingerprint`` the cache must also come from this model and
    these data (:func:`provenance_problem`)."""
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
    return provenance_problem(metadata, model_sha256=model_sha256,
                              data_fingerprint=data_fingerprint)
