"""Numba kernels for |x| histograms and finite min/max (the calibration hot loop).

Binning rule (architecture.md, shared with the GPU kernel and every test)::

    inv_width = float64(B) / float64(R)
    index(x)  = min(int(float64(|x|) * inv_width), B - 1)

The kernels compute ``int(min(|x| * inv_width, B - 1.0))``, which is the same integer for every
finite ``|x| >= 0`` (truncation is monotonic and ``B - 1`` is an integer), and lets the index
computation run as a vectorised select instead of a branch.

Design, measured with ``bench/histogram.py``:

* Data is processed in blocks of ``_BLOCK`` elements. A first, SIMD-vectorised loop turns a block
  into bin indices (float32 -> float64 -> ``* inv_width`` -> clamp -> int32) and at the same time
  folds min/max over the *integer* view of the same bytes (an order-preserving bit-key; integer
  min/max reductions vectorise, float ones do not without fast-math). A second, scalar loop
  scatters the indices into 4 interleaved uint16 sub-histograms (small enough for L1, flushed into
  the int64 counts every 2**17 elements) so consecutive equal indices (the many
  exact zeros of ReLU outputs) do not serialise on store-to-load forwarding.
* NaN and +-Inf are routed to an extra bin ``B`` ("non-finite") by the same select; only when that
  bin is non-empty does a second (rare) pass tell NaN, +Inf and -Inf apart.
* ``fastmath`` stays off: it would let LLVM assume no NaN/Inf and break exactly that routing.

All kernels take C-contiguous 1-D arrays; :func:`scan` and :func:`scan_stats` prepare any
float16/float32/float64 array (any shape, any strides) for them.
"""
from __future__ import annotations

import struct
import threading
from typing import Callable, NamedTuple

import numpy as np
from numba import float32, float64, int32, int64, njit, types

_BLOCK = 1024
# Below this many elements the 4 sub-histograms (4 * (B + 1) uint16) cost more to clear and sum
# than they save.
_SUBHIST_MIN = 16384
# The sub-histograms count in uint16 (a quarter of int64's cache footprint: 4 x 2049 bins fit
# L1) and are flushed into the int64 counts every this many elements: one sub-histogram bin
# then holds at most 2**15 + 3 * 2**7 < 2**16. Measured (one thread, CPU time, 8M float32):
# 2048 bins about 4.8 -> 7.0 GB/s, 4096 bins 4.6 -> 5.6 GB/s against int64 sub-histograms.
_FLUSH_EVERY = 1 << 17
# float16 input is widened to float32 (exactly) in chunks of this many elements.
_F16_CHUNK = 1 << 18


# --------------------------------------------------------------------------- block helpers
@njit(nogil=True, cache=True)
def _block_indices_32(xb, xib, inv_width, top, bad, idx, mm):  # pragma: no cover - numba
    # One vectorisable loop: bin index of each value, and min/max of the finite values through
    # the order-preserving key  key = bits ^ ((bits >> 31) & 0x7fffffff).
    kmin = mm[0]
    kmax = mm[1]
    for j in range(xb.size):
        a = abs(np.float64(xb[j]))
        fin = a < np.inf
        t = min(a * inv_width, top) if fin else bad
        idx[j] = np.int32(t)
        v = xib[j]
        key = v ^ ((v >> np.int32(31)) & np.int32(0x7FFFFFFF))
        kmin = min(kmin, key if fin else np.int32(0x7FFFFFFF))
        kmax = max(kmax, key if fin else np.int32(-0x80000000))
    mm[0] = kmin
    mm[1] = kmax


@njit(nogil=True, cache=True)
def _block_indices_64(xb, xib, inv_width, top, bad, idx, mm):  # pragma: no cover - numba
    kmin = mm[0]
    kmax = mm[1]
    for j in range(xb.size):
        a = abs(xb[j])
        fin = a < np.inf
        t = min(a * inv_width, top) if fin else bad
        idx[j] = np.int32(t)
        v = xib[j]
        key = v ^ ((v >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))
        kmin = min(kmin, key if fin else np.int64(0x7FFFFFFFFFFFFFFF))
        kmax = max(kmax, key if fin else np.int64(-0x8000000000000000))
    mm[0] = kmin
    mm[1] = kmax


@njit(nogil=True, cache=True)
def _flush(sub, counts):  # pragma: no cover - numba
    # Add the uint16 sub-histograms into the int64 counts and clear them.
    for b in range(counts.size):
        counts[b] += np.int64(sub[0, b]) + np.int64(sub[1, b]) + np.int64(sub[2, b]) + np.int64(
            sub[3, b])
        sub[0, b] = 0
        sub[1, b] = 0
        sub[2, b] = 0
        sub[3, b] = 0


@njit(nogil=True, cache=True)
def _scatter(idx, m, sub, counts, use_sub):  # pragma: no cover - numba
    if use_sub:
        m4 = m - m % 4
        for j in range(0, m4, 4):
            sub[0, idx[j]] += 1
            sub[1, idx[j + 1]] += 1
            sub[2, idx[j + 2]] += 1
            sub[3, idx[j + 3]] += 1
        for j in range(m4, m):
            sub[0, idx[j]] += 1
    else:
        for j in range(m):
            counts[idx[j]] += 1


# --------------------------------------------------------------------------- lazy loading
class _LazyKernel:
    """``njit(signatures)(func)``, compiled (or loaded from numba's disk cache) on first call.

    Eager signatures would load every kernel at import: measured ~0.25 s CPU for all of them,
    while a float32 model needs two (pass 1 ``minmax_32``, pass 2 ``hist_minmax_32``).
    The lock keeps two worker threads from loading the same kernel at once.
    """

    _lock = threading.Lock()

    def __init__(self, func: Callable, signatures: list) -> None:
        self._func = func
        self._signatures = signatures
        self._dispatcher = None
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    def _load(self):
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = njit(self._signatures, nogil=True, cache=True)(self._func)
        return self._dispatcher

    def __call__(self, *args):
        dispatcher = self._dispatcher or self._load()
        return dispatcher(*args)

    @property
    def dispatcher(self):
        """The numba dispatcher (loaded now if it was not): ``.stats``, ``.signatures``."""
        return self._dispatcher or self._load()


def _lazy_njit(signatures: list) -> Callable[[Callable], _LazyKernel]:
    return lambda func: _LazyKernel(func, signatures)


# --------------------------------------------------------------------------- public kernels
# Inputs are typed read-only: writable arrays convert to that type, and read-only ones (np.load
# mmap, np.frombuffer, ...) then need no second specialisation. One signature per dtype keeps
# cold compilation (once per installation, then numba's on-disk cache) to a few seconds.
_F32 = types.Array(float32, 1, "C", readonly=True)
_F64 = types.Array(float64, 1, "C", readonly=True)
_I32 = types.Array(int32, 1, "C", readonly=True)
_I64 = types.Array(int64, 1, "C", readonly=True)
_HIST_SIG_32 = types.UniTuple(int64, 2)(_F32, _I32, float64, int64[::1])
_HIST_SIG_64 = types.UniTuple(int64, 2)(_F64, _I64, float64, int64[::1])


@_lazy_njit([_HIST_SIG_32])
def hist_minmax_32(x, xi, inv_width, counts):  # pragma: no cover - numba
    """Add the bin indices of float32 ``x`` to ``counts`` and return the finite min/max keys.

    x: (N,) float32, xi: the same memory viewed as int32; counts: (B + 1,) int64, bin ``B``
    receives every NaN/+-Inf. Returns (kmin, kmax) order-preserving keys (see :func:`key_to_float`);
    (INT32_MAX, INT32_MIN) when no value is finite.
    """
    nb = counts.size - 1
    top = np.float64(nb - 1)
    bad = np.float64(nb)
    use_sub = x.size >= _SUBHIST_MIN
    sub = np.zeros((4 if use_sub else 0, nb + 1), np.uint16)
    idx = np.empty(_BLOCK, np.int32)
    mm = np.array([0x7FFFFFFF, -0x80000000], np.int32)
    n = x.size
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        _block_indices_32(x[s:e], xi[s:e], inv_width, top, bad, idx, mm)
        _scatter(idx, e - s, sub, counts, use_sub)
        if use_sub and e % _FLUSH_EVERY == 0:
            _flush(sub, counts)
    if use_sub:
        _flush(sub, counts)
    return np.int64(mm[0]), np.int64(mm[1])


@_lazy_njit([_HIST_SIG_64])
def hist_minmax_64(x, xi, inv_width, counts):  # pragma: no cover - numba
    """float64 twin of :func:`hist_minmax_32` (xi: int64 view; keys over int64)."""
    nb = counts.size - 1
    top = np.float64(nb - 1)
    bad = np.float64(nb)
    use_sub = x.size >= _SUBHIST_MIN
    sub = np.zeros((4 if use_sub else 0, nb + 1), np.uint16)
    idx = np.empty(_BLOCK, np.int32)
    mm = np.array([0x7FFFFFFFFFFFFFFF, -0x8000000000000000], np.int64)
    n = x.size
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        _block_indices_64(x[s:e], xi[s:e], inv_width, top, bad, idx, mm)
        _scatter(idx, e - s, sub, counts, use_sub)
        if use_sub and e % _FLUSH_EVERY == 0:
            _flush(sub, counts)
    if use_sub:
        _flush(sub, counts)
    return mm[0], mm[1]


@_lazy_njit([types.UniTuple(int64, 3)(_I32)])
def minmax_32(xi):  # pragma: no cover - numba
    """Pass-1 kernel: (kmin, kmax, num_nonfinite) over float32 bits ``xi`` (N,) int32."""
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    nbad = 0
    for i in range(xi.size):
        v = xi[i]
        fin = (v & np.int32(0x7FFFFFFF)) < np.int32(0x7F800000)
        key = v ^ ((v >> np.int32(31)) & np.int32(0x7FFFFFFF))
        kmin = min(kmin, key if fin else np.int32(0x7FFFFFFF))
        kmax = max(kmax, key if fin else np.int32(-0x80000000))
        nbad += 0 if fin else 1
    return np.int64(kmin), np.int64(kmax), np.int64(nbad)


@_lazy_njit([types.UniTuple(int64, 3)(_I64)])
def minmax_64(xi):  # pragma: no cover - numba
    """float64 twin of :func:`minmax_32` (xi: (N,) int64 bits)."""
    kmin = np.int64(0x7FFFFFFFFFFFFFFF)
    kmax = np.int64(-0x8000000000000000)
    nbad = 0
    for i in range(xi.size):
        v = xi[i]
        fin = (v & np.int64(0x7FFFFFFFFFFFFFFF)) < np.int64(0x7FF0000000000000)
        key = v ^ ((v >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))
        kmin = min(kmin, key if fin else np.int64(0x7FFFFFFFFFFFFFFF))
        kmax = max(kmax, key if fin else np.int64(-0x8000000000000000))
        nbad += 0 if fin else 1
    return kmin, kmax, np.int64(nbad)


@_lazy_njit([types.UniTuple(int64, 3)(_F32), types.UniTuple(int64, 3)(_F64)])
def classify_nonfinite(x):  # pragma: no cover - numba
    """(num_nan, num_posinf, num_neginf) of ``x`` (N,). Only run when non-finite values exist."""
    nnan = 0
    npos = 0
    nneg = 0
    for i in range(x.size):
        v = x[i]
        if v != v:
            nnan += 1
        elif v == np.inf:
            npos += 1
        elif v == -np.inf:
            nneg += 1
    return np.int64(nnan), np.int64(npos), np.int64(nneg)


def load_float32_kernels() -> None:
    """Compile or load from cache the float32 kernels of both passes (most models' dtype)."""
    minmax_32._load()
    hist_minmax_32._load()


# --------------------------------------------------------------------------- python glue
def key_to_float(key: int, bits: int) -> float:
    """Invert the order-preserving key of a float32 (bits=32) or float64 (bits=64) value."""
    # The key map is its own inverse; plain ints + struct: this runs twice per tensor per batch.
    mask = (1 << (bits - 1)) - 1
    raw = key ^ (mask if key < 0 else 0)
    if bits == 32:
        return struct.unpack("<f", struct.pack("<i", raw))[0]
    return struct.unpack("<d", struct.pack("<q", raw))[0]


class RawScan(NamedTuple):
    """What one pass over an array found. min/max are over finite values (0.0 when none)."""

    # (B,) int64 view of a pooled (B + 1,) buffer, or None when no histogram was asked for;
    # call release() once the counts have been added somewhere
    counts: np.ndarray | None
    min: float
    max: float
    num_finite: int
    num_nan: int
    num_posinf: int
    num_neginf: int


class _CountsPool:
    """Recycles (B + 1,) int64 count buffers between scans.

    A batch of a few hundred small tensors would otherwise allocate and free a few hundred
    32 KB arrays at once; glibc then returns the memory to the OS and faults it back in on the
    next batch, which measured ~40 us per tensor - more than the binning itself. Thread-safe:
    list.append/pop are atomic under the GIL.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._max_bytes = max_bytes
        self._bytes = 0

    def take(self, size: int) -> np.ndarray:
        try:
            buf = self._free.get(size, []).pop()
        except IndexError:
            return np.zeros(size, dtype=np.int64)
        self._bytes -= buf.nbytes
        buf.fill(0)
        return buf

    def give(self, buf: np.ndarray) -> None:
        if self._bytes + buf.nbytes <= self._max_bytes:
            self._bytes += buf.nbytes
            self._free.setdefault(buf.size, []).append(buf)


_POOL = _CountsPool()


def release(raw: RawScan) -> None:
    """Hand the count buffer of a consumed :func:`scan` result back for reuse."""
    if raw.counts is not None and raw.counts.base is not None:
        _POOL.give(raw.counts.base)


def _flat_chunks(x: np.ndarray):
    """Yield C-contiguous 1-D float32/float64 pieces covering every element of ``x`` once."""
    flat = np.ascontiguousarray(x.ravel(order="K"))
    if flat.dtype == np.float16:
        for s in range(0, flat.size, _F16_CHUNK):
            yield flat[s : s + _F16_CHUNK].astype(np.float32)  # exact widening
    else:
        yield flat


def scan(x: np.ndarray, num_bins: int, inv_width: float | None) -> RawScan:
    """One fused pass: |x| histogram with ``num_bins`` bins (if ``inv_width`` is not None) and the
    finite min/max plus NaN/+Inf/-Inf counts.

    x: any shape, dtype float16/float32/float64 (checked by the caller). ``inv_width`` =
    float64(B) / float64(hist_max), finite and > 0.
    """
    counts = _POOL.take(num_bins + 1) if inv_width is not None else None
    kmin = kmax = None
    nbad = 0
    bits = 64 if x.dtype == np.float64 else 32
    for piece in _flat_chunks(x):
        if piece.size == 0:
            continue
        if bits == 32:
            xi = piece.view(np.int32)
            if counts is not None:
                lo, hi = hist_minmax_32(piece, xi, float(inv_width), counts)
                bad = -1
            else:
                lo, hi, bad = minmax_32(xi)
        else:
            xi = piece.view(np.int64)
            if counts is not None:
                lo, hi = hist_minmax_64(piece, xi, float(inv_width), counts)
                bad = -1
            else:
                lo, hi, bad = minmax_64(xi)
        kmin = lo if kmin is None else min(kmin, lo)
        kmax = hi if kmax is None else max(kmax, hi)
        if bad > 0:
            nbad += bad
    if counts is not None:
        nbad = int(counts[num_bins])
        counts = counts[:num_bins]
    nnan = npos = nneg = 0
    if nbad:
        # Rare: re-read (re-widen float16 chunks rather than keep them all alive).
        for piece in _flat_chunks(x):
            a, b, c = classify_nonfinite(piece)
            nnan, npos, nneg = nnan + a, npos + b, nneg + c
    num_finite = int(x.size) - nbad
    if num_finite == 0:
        lo_f = hi_f = 0.0
    else:
        lo_f = key_to_float(kmin, bits)
        hi_f = key_to_float(kmax, bits)
    return RawScan(counts, lo_f, hi_f, num_finite, int(nnan), int(npos), int(nneg))
