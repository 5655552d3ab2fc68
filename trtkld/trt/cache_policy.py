"""Our calibration cache for the calibrator: reuse it or make it (no TensorRT involved).

- :class:`CacheRequest`: what the cache handed to TensorRT must be (file, running TensorRT
  version, calibrator algorithm, method, search options, collector, model).
- :class:`CachePolicy`: ``should_reuse(request) -> (bool, reason)``. The single place where
  reuse is decided: the header must match the running version and algorithm, and the sidecar
  must vouch for the method/options/collector and the very bytes. Extend it (subclass, or add a
  check to :meth:`CachePolicy.checks`) for further provenance rules.
- :class:`CacheMaker`: makes the cache (histograms -> search -> cache + sidecar) through one
  call, :func:`write_calibration`, i.e. ``trtkld.calibrate()`` and its one writer, shared with
  ``trtkld calibrate``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from trtkld.errors import DataError, TrtkldError

log = logging.getLogger("trtkld.trt")


@dataclass(frozen=True)
class CacheRequest:
    """The cache a calibrator must hand TensorRT."""

    cache_file: Path
    trt_version: str  # e.g. "10.9.0.34": the header's TRT-<N>
    algorithm: str  # "EntropyCalibration2", ...: the header's algorithm
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    collector: str = "onnxruntime"
    onnx: Optional[Path] = None

    @property
    def version_number(self) -> int:
        from trtkld.cache import trt_version_number

        return trt_version_number(self.trt_version)


class CachePolicy:
    """Decides whether an existing cache file may be handed to TensorRT as it is."""

    def __init__(
        self,
        *,
        force: bool = False,
        data_fingerprint: Optional[Callable[[], Optional[Mapping[str, Any]]]] = None,
    ) -> None:
        self.force = force
        # the data at hand (CalibrationData.fingerprint), None when no data was given: a
        # rebuild from the cache alone cannot check the data
        self.data_fingerprint = data_fingerprint

    def should_reuse(self, request: CacheRequest) -> tuple[bool, str]:
        """``(True, why it fits)`` or ``(False, why it must be made again)``."""
        if self.force:
            return False, "regeneration was forced"
        path = request.cache_file
        if not path.is_file():
            return False, f"no cache file at {path}"
        raw = path.read_bytes()
        for check in self.checks():
            problem = check(request, raw)
            if problem is not None:
                return False, problem
        return True, (
            f"its header matches TensorRT {request.trt_version} / {request.algorithm} and its "
            f"sidecar records method {request.method!r}"
        )

    def checks(self) -> list[Callable[[CacheRequest, bytes], Optional[str]]]:
        """Each returns why ``raw`` may not be reused, or None; the first problem wins."""
        return [self.header_problem, self.sidecar_problem, self.provenance_problem]

    @staticmethod
    def header_problem(request: CacheRequest, raw: bytes) -> Optional[str]:
        from trtkld.cache import format_trt_version, parse_cache

        try:
            cache = parse_cache(raw)
        except TrtkldError as exc:
            return f"it cannot be parsed ({exc})"
        if cache.version_number != request.version_number:
            try:
                written = format_trt_version(cache.version_number)
            except TrtkldError:
                written = str(cache.version_number)
            return (
                f"it was written for TensorRT {written} (header {cache.header}), but TensorRT "
                f"{request.trt_version} (TRT-{request.version_number}) is running"
            )
        if cache.algorithm != request.algorithm:
            return (
                f"its algorithm is {cache.algorithm} (header {cache.header}), but this "
                f"calibrator uses {request.algorithm}"
            )
        return None

    @staticmethod
    def sidecar_problem(request: CacheRequest, raw: bytes) -> Optional[str]:
        from trtkld.cache import sidecar

        try:
            meta = sidecar.read_metadata(request.cache_file)
        except TrtkldError as exc:
            return str(exc)
        return sidecar.metadata_problem(
            meta, cache_file=request.cache_file, cache_bytes=raw, method=request.method,
            options=request.options, collector=request.collector,
        )

    def provenance_problem(self, request: CacheRequest, raw: bytes) -> Optional[str]:
        """The cache must come from this model and these data (sidecar fingerprints)."""
        from trtkld.cache import sidecar
        from trtkld.pipeline import model_fingerprint

        meta = sidecar.read_metadata(request.cache_file) or {}
        model = request.onnx if request.onnx is not None and request.onnx.is_file() else None
        return sidecar.provenance_problem(
            meta, model_sha256=model_fingerprint(model),
            data_fingerprint=self.data_fingerprint() if self.data_fingerprint else None,
        )


def write_calibration(
    request: CacheRequest,
    data: Any,
    *,
    histograms: Any = None,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    quiet: bool = False,
) -> bytes:
    """Calibrate ``request.onnx`` on ``data`` and write the cache + sidecar; the cache bytes.

    The one call through which the calibrator writes a cache: ``trtkld.calibrate`` and its
    ``write_cache`` (:func:`trtkld.calibration.write_calibration_cache`), the writer of
    ``trtkld calibrate`` too.
    """
    from trtkld.calibration import calibrate

    # auto=None: the calibrator's ``auto`` is the per-tensor histogram-SQNR rule (as before the
    # output-measured auto). That one needs weighted ops to measure and records how it measured
    # in the sidecar options, so its cache would never match the request on the next build.
    cal = calibrate(
        request.onnx, data, [request.method], include=include, exclude=exclude, quiet=quiet,
        histograms=histograms, collector=request.collector, auto=None, **dict(request.options),
    )
    if not cal.provenance.get("data_sha256") and hasattr(data, "fingerprint"):
        from trtkld.pipeline import fingerprints

        cal.provenance = fingerprints(request.onnx, data)   # histograms came from the GPU
    written = cal.write_cache(request.cache_file, request.method,
                              trt_version=request.trt_version, algorithm=request.algorithm)
    log.info(
        "wrote calibration cache %s: %d tensors, %s, method %s, collector %s",
        request.cache_file, len(cal.results[request.method]),
        written.split(b"\n", 1)[0].decode("ascii"), request.method, request.collector,
    )
    return written


class CacheMaker:
    """Reuses (per the policy) or makes the cache of one request; remembers the outcome."""

    def __init__(
        self,
        request: CacheRequest,
        policy: CachePolicy,
        *,
        data: Callable[[], Any],
        histograms: Optional[Callable[[Any], Any]] = None,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        quiet: bool = False,
    ) -> None:
        self.request = request
        self.policy = policy
        self._data = data
        self._histograms = histograms
        self.include, self.exclude, self.quiet = include, exclude, quiet
        self.cache_bytes: Optional[bytes] = None
        self.status: Optional[str] = None  # "reused" | "generated"
        self.reason: Optional[str] = None  # why it was (re)generated

    def would_generate(self) -> bool:
        """True if :meth:`get` would have to make the cache (no reuse possible)."""
        return self.cache_bytes is None and not self.policy.should_reuse(self.request)[0]

    def get(self) -> bytes:
        if self.cache_bytes is not None:
            return self.cache_bytes
        req = self.request
        reuse, reason = self.policy.should_reuse(req)
        if reuse:
            self.cache_bytes = req.cache_file.read_bytes()
            self.status = "reused"
            log.info(
                "reusing calibration cache %s (TensorRT %s, %s, method %s)",
                req.cache_file, req.trt_version, req.algorithm, req.method,
            )
            return self.cache_bytes
        self.reason = reason
        log.warning("regenerating calibration cache %s: %s", req.cache_file, reason)
        if req.onnx is None:
            raise DataError(f"generating {req.cache_file} needs the ONNX model (onnx=...)")
        data = self._data()
        histograms = None if self._histograms is None else self._histograms(data)
        self.cache_bytes = write_calibration(
            req, data, histograms=histograms, include=self.include, exclude=self.exclude,
            quiet=self.quiet,
        )
        self.status = "generated"
        return self.cache_bytes


def tensorrt_cache_file(cache_file: os.PathLike, given: Optional[os.PathLike]) -> Path:
    """Where TensorRT's own cache goes; never our cache file itself."""
    from trtkld.cache import sidecar

    path = Path(given) if given else sidecar.tensorrt_cache_path(cache_file)
    if path.resolve() == Path(cache_file).resolve():
        raise TrtkldError(
            f"tensorrt_cache_file {path} is the cache file itself; TensorRT's cache must never "
            f"overwrite ours"
        )
    return path
