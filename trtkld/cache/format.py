"""The TensorRT calibration cache text format: parse, serialise, write atomically.

Format (shared/docs/trt-facts.md, checked against the real files in shared/fixtures/trt_caches)::

    TRT-<N>-<Algorithm>\\n
    <tensor name>: <hex>\\n          one line per tensor, every line newline-terminated

``<hex>`` is the float32 bit pattern of ``scale = amax / 127``, lowercase, not zero-padded
(``0`` for a zero scale). Names are verbatim and may contain ``:`` and ``": "``; the hex never
does, so a line is split on its LAST ``": "``.

Decisions recorded here (the "why"):

- Parsing is tolerant where it cannot lose information (zero-padded or upper-case hex, a missing
  final newline) and strict where guessing could (blank lines, CR, NUL, more than 8 hex digits).
- Parsing keeps 0 / negative / NaN / inf scales (TensorRT itself writes 0 and ``7f800000``) so
  that a file round-trips byte for byte; *writing* such a scale is an error unless
  ``allow_nonpositive=True`` (the name is the architecture contract's; it covers 0, negative,
  NaN and +/-inf), because TensorRT would use it as a real dynamic range.
- An unknown algorithm in a parsed header is a warning (:class:`UnknownAlgorithmWarning`): the
  scales are still readable, e.g. for ``trtkld diff``. Building (``from_trt_version``) or writing
  a cache with an unknown algorithm is an error: TensorRT ignores a cache whose algorithm does not
  match its calibrator's, silently falling back to its own calibration.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from trtkld._io import atomic_write, read_regular_file
from trtkld.cache.version import format_trt_version, parse_trt_version_number, trt_version_number
from trtkld.errors import CacheFormatError

# A cache holds one ~40-byte line per tensor: 256 MiB is millions of tensors, far beyond any
# network, and keeps a wrong path (a video, /dev/zero) from being read into memory.
MAX_CACHE_BYTES = 256 * 2**20

KNOWN_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration")

_HEADER_RE = re.compile(r"TRT-(\d+)-(.*)")
_ALGORITHM_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HEX_RE = re.compile(r"[0-9a-fA-F]{1,8}")
_SEPARATOR = ": "
# Characters that would break the line structure (\n, \r) or a C string inside TensorRT (\0).
_FORBIDDEN_IN_NAME = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL character"}

ScalesLike = Union[Mapping[str, object], Iterable[tuple[str, object]]]
Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


class UnknownAlgorithmWarning(UserWarning):
    """A parsed cache header names an algorithm outside :data:`KNOWN_ALGORITHMS`."""


def _shorten(text: str, limit: int = 120) -> str:
    """repr of text, cut to about ``limit`` characters so error messages stay one readable line."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def _name_problem(name: object) -> Optional[str]:
    """Why name cannot be written on one cache line, or None if it can."""
    if not isinstance(name, str):
        return f"tensor name must be a string, found {type(name).__name__} {name!r}"
    if name == "":
        return "tensor name is empty"
    for char, what in _FORBIDDEN_IN_NAME.items():
        if char in name:
            return (
                f"tensor name {_shorten(name)} contains {what}, which the one-line-per-tensor "
                f"cache format cannot hold"
            )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"tensor name {_shorten(name)} is not encodable as UTF-8 ({exc.reason})"
    return None


def _check_name(name: object, where: str) -> str:
    """Returns name if it can be written on one cache line, else raises CacheFormatError."""
    problem = _name_problem(name)
    if problem is not None:
        raise CacheFormatError(f"{where}: {problem}")
    return name  # type: ignore[return-value]


def _check_algorithm(algorithm: object) -> str:
    """Syntax check only (one token); whether TensorRT knows it is checked on build/write."""
    if not isinstance(algorithm, str) or _ALGORITHM_RE.fullmatch(algorithm) is None:
        raise CacheFormatError(
            f"calibration algorithm must be a single word such as 'EntropyCalibration2', found "
            f"{algorithm!r}"
        )
    return algorithm


def _require_known_algorithm(algorithm: str) -> None:
    if algorithm not in KNOWN_ALGORITHMS:
        raise CacheFormatError(
            f"unknown calibration algorithm {algorithm!r}: expected one of "
            f"{', '.join(KNOWN_ALGORITHMS)} (TensorRT ignores a cache whose algorithm does not "
            f"match its calibrator's get_algorithm())"
        )


def _to_float32(name: str, value: object) -> np.float32:
    if isinstance(value, np.float32):
        return value  # kept as is: no conversion that could alter NaN payload bits
    try:
        with np.errstate(over="ignore"):
            return np.float32(value)
    except (TypeError, ValueError):
        raise CacheFormatError(
            f"scale of tensor {_shorten(name)} must be a number, found {type(value).__name__} "
            f"{value!r}"
        ) from None


def float32_bits(value: np.float32) -> int:
    """IEEE-754 bit pattern of a float32 scalar as a Python int (0 .. 2**32-1)."""
    return int(np.float32(value).view(np.uint32))


def float32_from_bits(bits: int) -> np.float32:
    """float32 scalar with exactly these bits (NaN payloads included)."""
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def scale_to_hex(value: np.float32) -> str:
    """TensorRT's spelling of a scale: lowercase hex of the float32 bits, not zero-padded."""
    return format(float32_bits(value), "x")


def _invalid_scale_reason(value: np.float32) -> Optional[str]:
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "infinite"
    if v == 0.0:
        return "zero"
    if v < 0.0:
        return "negative"
    return None


@dataclass
class CalibrationCache:
    """A TensorRT calibration cache held in memory.

    version_number: header number (``100900`` for TensorRT 10.9.0, see :mod:`.version`).
    algorithm: header algorithm, normally one of :data:`KNOWN_ALGORITHMS`.
    scales: ordered tensor name -> float32 scale (``amax / 127``, activation units per step).
        Accepts any mapping or an iterable of ``(name, scale)`` pairs; a repeated name, an
        empty name or one with a newline/CR/NUL raises CacheFormatError. Order is kept: it is
        the order the lines are written in.
    """

    version_number: int
    algorithm: str
    scales: dict[str, np.float32] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_trt_version_number(self.version_number)  # raises on a number no version encodes
        self.version_number = int(self.version_number)
        self.algorithm = _check_algorithm(self.algorithm)
        self.scales = _normalise_scales(self.scales)

    @classmethod
    def from_trt_version(
        cls, version: str, algorithm: str, scales: ScalesLike
    ) -> CalibrationCache:
        """Cache for TensorRT ``version`` ("10.9.0"); algorithm must be a known one."""
        _require_known_algorithm(_check_algorithm(algorithm))
        return cls(trt_version_number(version), algorithm, scales)

    @property
    def trt_version(self) -> str:
        """The header number as a version string, e.g. ``"10.9.0"``."""
        return format_trt_version(self.version_number)

    @property
    def header(self) -> str:
        return f"TRT-{self.version_number}-{self.algorithm}"

    def to_bytes(self, allow_nonpositive: bool = False) -> bytes:
        """The exact text TensorRT writes (UTF-8, ``\\n`` after every line, header included).

        Raises CacheFormatError for an unknown algorithm, an unwritable name, or (unless
        ``allow_nonpositive``) a scale that is 0, negative, NaN or infinite.
        """
        # Re-validated here because ``scales`` is a plain dict the caller may have edited.
        parse_trt_version_number(self.version_number)
        _require_known_algorithm(_check_algorithm(self.algorithm))
        lines = [self.header]
        for name, value in self.scales.items():
            _check_name(name, "calibration cache")
            scale = _to_float32(name, value)
            if not allow_nonpositive:
                reason = _invalid_scale_reason(scale)
                if reason is not None:
                    raise CacheFormatError(
                        f"scale of tensor {_shorten(name)} is {reason} ({float(scale)!r}, bits "
                        f"{scale_to_hex(scale)}): expected a finite scale > 0 (TensorRT would use "
                        f"it as the tensor's dynamic range); pass allow_nonpositive=True only to "
                        f"reproduce an existing file"
                    )
            lines.append(f"{name}{_SEPARATOR}{scale_to_hex(scale)}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _normalise_scales(scales: ScalesLike) -> dict[str, np.float32]:
    items = scales.items() if isinstance(scales, Mapping) else scales
    out: dict[str, np.float32] = {}
    try:
        iterator = iter(items)
    except TypeError:
        raise CacheFormatError(
            f"scales must be a mapping or (name, scale) pairs, found {type(scales).__name__}"
        ) from None
    for position, item in enumerate(iterator):
        try:
            name, value = item
        except (TypeError, ValueError):
            raise CacheFormatError(
                f"scales entry {position} must be a (name, scale) pair, found {item!r}"
            ) from None
        _check_name(name, f"scales entry {position}")
        if name in out:
            raise CacheFormatError(
                f"scales entry {position}: duplicate tensor name {_shorten(name)} (each tensor "
                f"may appear once in a calibration cache)"
            )
        out[name] = _to_float32(name, value)
    return out


def _read_source(source: Source) -> tuple[bytes, Optional[str]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise CacheFormatError(
            f"calibration cache source must be bytes or a path, found {type(source).__name__}"
        )
    path = os.fspath(source)
    if isinstance(source, str) and "\n" in source and not os.path.lexists(path):
        raise CacheFormatError(
            f"cannot read calibration cache {_shorten(path)}: a str is taken as a path; pass "
            f"the cache text as bytes"
        )
    # Regular files only, at most MAX_CACHE_BYTES: a FIFO or /dev/zero must not hang or fill
    # the memory.
    return read_regular_file(path, limit=MAX_CACHE_BYTES, what="calibration cache",
                             error=CacheFormatError), path


def parse_cache(source: Source) -> CalibrationCache:
    """Parse a TensorRT calibration cache from its bytes, or from a file path (str/PathLike).

    Raises CacheFormatError naming the file (for a path), the 1-based line number and the line
    for a malformed header or entry, a duplicate tensor name, or text that is not UTF-8.
    Warns (UnknownAlgorithmWarning) for an algorithm outside KNOWN_ALGORITHMS.
    """
    data, path = _read_source(source)
    where = f"calibration cache {path}" if path is not None else "calibration cache"

    def fail(line_number: int, problem: str, line: str) -> CacheFormatError:
        return CacheFormatError(f"{where}, line {line_number}: {problem}: {_shorten(line)}")

    if not data:
        raise CacheFormatError(f"{where}: file is empty, expected a header TRT-<N>-<Algorithm>")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline TensorRT writes (tolerated if missing)

    texts = []
    for index, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CacheFormatError(
                f"{where}, line {index}: not valid UTF-8 at byte {exc.start}: {raw[:120]!r}"
            ) from None
        if "\r" in text:
            raise fail(
                index, "carriage return found (CRLF line endings?); TensorRT writes \\n", text
            )
        texts.append(text)

    header = _HEADER_RE.fullmatch(texts[0])
    if header is None:
        raise fail(1, "expected a header TRT-<N>-<Algorithm>, e.g. TRT-100900-EntropyCalibration2",
                   texts[0])
    try:
        version_number = int(header.group(1))
        parse_trt_version_number(version_number)
        algorithm = _check_algorithm(header.group(2))
    except CacheFormatError as exc:
        raise fail(1, f"bad header ({exc})", texts[0]) from None
    if algorithm not in KNOWN_ALGORITHMS:
        warnings.warn(
            f"{where}: header algorithm {algorithm!r} is not one of "
            f"{', '.join(KNOWN_ALGORITHMS)}; scales read anyway",
            UnknownAlgorithmWarning,
            stacklevel=2,
        )

    scales: dict[str, np.float32] = {}
    first_seen: dict[str, int] = {}
    for index, text in enumerate(texts[1:], start=2):
        name, sep, hex_text = text.rpartition(_SEPARATOR)
        if not sep:
            raise fail(index, "expected '<tensor name>: <hex float32 bits>'", text)
        if _HEX_RE.fullmatch(hex_text) is None:
            raise fail(index, f"scale {hex_text!r} is not 1 to 8 hex digits", text)
        problem = _name_problem(name)
        if problem is not None:
            raise fail(index, problem, text)
        if name in scales:
            raise fail(index, f"duplicate tensor name (first on line {first_seen[name]})", text)
        first_seen[name] = index
        scales[name] = float32_from_bits(int(hex_text, 16))
    return CalibrationCache(version_number, algorithm, scales)


def write_cache(
    cache: CalibrationCache, path: Union[str, os.PathLike[str]], allow_nonpositive: bool = False
) -> None:
    """Write ``cache.to_bytes(allow_nonpositive)`` to ``path`` atomically.

    The bytes are built (and validated) first, then written to a temporary file in the same
    directory, flushed and fsynced, and moved over ``path`` with os.replace: on any error the
    previous file at ``path`` is left untouched and the temporary file is removed.
    """
    data = cache.to_bytes(allow_nonpositive=allow_nonpositive)
    target = os.fspath(path)
    try:
        atomic_write(target, data)
    except OSError as exc:
        raise CacheFormatError(
            f"cannot write calibration cache {_shorten(target)}: {exc.strerror or exc}"
        ) from exc
