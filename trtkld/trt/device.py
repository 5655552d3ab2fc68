"""Device memory behind a tiny interface, plus the host-memory TEST backend.

:class:`DeviceBackend` is everything the calibrator and the GPU histogram collector need from
a GPU: allocate, copy host->device (and back, for the few bytes of bins/stats), the raw device
pointer TensorRT wants, free, and the two kernel launches. The real implementation,
``PycudaBackend``, lives in :mod:`trtkld.trt._backend` (the only module that imports pycuda).

:class:`HostBufferBackend` is a TEST backend: its "device" buffers are numpy arrays in host
memory and its pointers are their ``ctypes`` addresses. Its kernels are written plainly with
numpy from the same rule as :mod:`trtkld.trt.kernels`, so CPU tests exercise the calibrator and
collector logic unchanged. It never touches a GPU; do not use it with a real TensorRT build.
"""
from __future__ import annotations

import abc
from typing import Any, Optional

import numpy as np

from trtkld.errors import TrtkldError
from trtkld.trt import kernels

__all__ = ["DeviceBackend", "HostBufferBackend", "InputBuffers", "DeviceBufferError"]


class DeviceBufferError(TrtkldError, RuntimeError):
    """A device buffer is used after being freed, or is too small for the data."""


class DeviceBackend(abc.ABC):
    """What trtkld needs from device memory. Handles are opaque to callers."""

    name: str = "abstract"

    @abc.abstractmethod
    def allocate(self, nbytes: int) -> Any:
        """A new device buffer of ``nbytes`` bytes (contents undefined)."""

    @abc.abstractmethod
    def copy_htod(self, handle: Any, host: np.ndarray) -> None:
        """Copy the C-contiguous ``host`` array into the start of ``handle``."""

    @abc.abstractmethod
    def copy_dtoh(self, host: np.ndarray, handle: Any) -> None:
        """Copy ``host.nbytes`` bytes from the start of ``handle`` into ``host`` (blocking)."""

    @abc.abstractmethod
    def copy_dtoh_ptr(self, host: np.ndarray, ptr: int) -> None:
        """Copy ``host.nbytes`` bytes from a raw device address (e.g. a TensorRT output)."""

    @abc.abstractmethod
    def memset_zero(self, handle: Any, nbytes: int) -> None:
        """Zero the first ``nbytes`` bytes of ``handle``."""

    @abc.abstractmethod
    def device_ptr(self, handle: Any) -> int:
        """The buffer's device address, as TensorRT's ``get_batch`` returns it."""

    @abc.abstractmethod
    def free(self, handle: Any) -> None:
        """Release the buffer now."""

    @abc.abstractmethod
    def histogram(
        self, ptr: int, count: int, inv_width: float, num_bins: int, bins_handle: Any
    ) -> None:
        """Add the |x| histogram of ``count`` float32 values at ``ptr`` to ``bins_handle``.

        ``bins_handle``: ``num_bins`` uint64 counters; ``inv_width = float64(B) / float64(R)``.
        Non-finite values are skipped. See :mod:`trtkld.trt.kernels` for the exact rule.
        """

    @abc.abstractmethod
    def stats(self, ptr: int, count: int, stats_handle: Any) -> None:
        """Accumulate min/max/absmax and NaN/Inf counts of ``count`` float32 values at ``ptr``
        into ``stats_handle`` (``kernels.STATS_LEN`` uint64, layout in :mod:`.kernels`)."""

    def synchronize(self) -> None:  # noqa: B027 - optional hook, a no-op for host memory
        """Wait for all queued copies and launches."""

    @property
    def stream_handle(self) -> int:
        """CUDA stream TensorRT should enqueue on (0: the default stream)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for host memory
        """Release backend-wide resources (streams, contexts). Idempotent."""


class HostBufferBackend(DeviceBackend):
    """TEST backend: host numpy buffers stand in for device memory (no GPU involved).

    Pointers are real host addresses (``ndarray.ctypes.data``), so a test can read back the
    bytes at a pointer ``get_batch`` returned. ``live_buffers`` counts unfreed buffers and a
    freed handle refuses further use, so tests can assert deterministic freeing.
    """

    name = "host-test"

    def __init__(self) -> None:
        self._live: dict[int, np.ndarray] = {}
        self.allocations = 0

    @property
    def live_buffers(self) -> int:
        return len(self._live)

    def _buf(self, handle: Any) -> np.ndarray:
        buf = self._live.get(id(handle))
        if buf is None or buf is not handle:
            raise DeviceBufferError("host test buffer used after free (or not allocated here)")
        return buf

    def allocate(self, nbytes: int) -> np.ndarray:
        # 64-byte aligned like cudaMalloc's (at least 256) guarantee, so float views are valid.
        raw = np.empty(int(nbytes) + 64, dtype=np.uint8)
        offset = (-raw.ctypes.data) % 64
        buf = raw[offset : offset + int(nbytes)]
        self._live[id(buf)] = buf
        self.allocations += 1
        return buf

    def copy_htod(self, handle: Any, host: np.ndarray) -> None:
        buf = self._buf(handle)
        src = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        if src.nbytes > buf.nbytes:
            raise DeviceBufferError(f"copy of {src.nbytes} bytes into a {buf.nbytes}-byte buffer")
        buf[: src.nbytes] = src

    def copy_dtoh(self, host: np.ndarray, handle: Any) -> None:
        buf = self._buf(handle)
        dst = host.reshape(-1).view(np.uint8)
        dst[:] = buf[: dst.nbytes]

    def copy_dtoh_ptr(self, host: np.ndarray, ptr: int) -> None:
        dst = host.reshape(-1).view(np.uint8)
        dst[:] = self._view_ptr(ptr, dst.nbytes, np.uint8)

    def memset_zero(self, handle: Any, nbytes: int) -> None:
        self._buf(handle)[: int(nbytes)] = 0

    def device_ptr(self, handle: Any) -> int:
        return int(self._buf(handle).ctypes.data)

    def free(self, handle: Any) -> None:
        self._buf(handle)
        del self._live[id(handle)]

    def _view_ptr(self, ptr: int, count: int, dtype: np.dtype) -> np.ndarray:
        """Array view of ``count`` values at ``ptr``, which must lie inside a live buffer."""
        dtype = np.dtype(dtype)
        for buf in self._live.values():
            start = buf.ctypes.data
            if start <= ptr and ptr + count * dtype.itemsize <= start + buf.nbytes:
                off = ptr - start
                return buf[off : off + count * dtype.itemsize].view(dtype)
        raise DeviceBufferError(f"pointer {ptr:#x} (+{count} values) is in no live test buffer")

    def histogram(
        self, ptr: int, count: int, inv_width: float, num_bins: int, bins_handle: Any
    ) -> None:
        x = self._view_ptr(ptr, count, np.float32)
        bins = self._buf(bins_handle).view(np.uint64)
        finite = x[np.isfinite(x)]
        # The rule of kernels.trtkld_bin_index, written plainly in float64.
        v = np.abs(finite).astype(np.float64) * np.float64(inv_width)
        idx = np.where(v >= num_bins - 1, num_bins - 1, np.floor(v)).astype(np.int64)
        bins[:num_bins] += np.bincount(idx, minlength=num_bins).astype(np.uint64)

    def stats(self, ptr: int, count: int, stats_handle: Any) -> None:
        x = self._view_ptr(ptr, count, np.float32)
        st = self._buf(stats_handle).view(np.uint64)
        nan = np.isnan(x)
        posinf = np.isposinf(x)
        neginf = np.isneginf(x)
        finite = x[~(nan | posinf | neginf)]
        st[kernels.STATS_NAN] += np.uint64(nan.sum())
        st[kernels.STATS_POSINF] += np.uint64(posinf.sum())
        st[kernels.STATS_NEGINF] += np.uint64(neginf.sum())
        if finite.size == 0:
            return
        st[kernels.STATS_FINITE] += np.uint64(finite.size)
        bits = finite.view(np.uint32)
        keys = np.where(bits & 0x80000000, ~bits, bits | 0x80000000).astype(np.uint64)
        st[kernels.STATS_ABSMAX_BITS] = max(int(st[0]), int((bits & 0x7FFFFFFF).max()))
        st[kernels.STATS_MAX_KEY] = max(int(st[1]), int(keys.max()))
        st[kernels.STATS_MIN_KEY_INV] = max(int(st[2]), int((~keys & 0xFFFFFFFF).max()))


class InputBuffers:
    """One device buffer per network input, allocated once at the largest size needed.

    ``reserve(name, nbytes)`` sets a buffer's size up front (the calibration shape); a later
    ``upload`` of a larger array is an error rather than a silent reallocation, because the
    pointers handed to TensorRT must stay valid. ``close()`` frees every buffer; it is safe to
    call twice, and the object is a context manager.
    """

    def __init__(self, backend: DeviceBackend) -> None:
        self.backend = backend
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._closed = False

    def __enter__(self) -> InputBuffers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def names(self) -> list[str]:
        return list(self._buffers)

    def nbytes(self, name: str) -> Optional[int]:
        entry = self._buffers.get(name)
        return None if entry is None else entry[1]

    def reserve(self, name: str, nbytes: int) -> None:
        if self._closed:
            raise DeviceBufferError(f"input buffer {name!r}: buffers were already closed")
        entry = self._buffers.get(name)
        if entry is not None:
            if entry[1] >= nbytes:
                return
            raise DeviceBufferError(
                f"input {name!r}: buffer already allocated with {entry[1]} bytes, "
                f"{nbytes} requested; buffers are sized once at the largest batch"
            )
        self._buffers[name] = (self.backend.allocate(max(int(nbytes), 1)), int(nbytes))

    def upload(self, name: str, array: np.ndarray) -> int:
        """Copy ``array`` into ``name``'s buffer (reserving it at this size if new); pointer."""
        array = np.ascontiguousarray(array)
        if name not in self._buffers:
            self.reserve(name, array.nbytes)
        handle, size = self._buffers[name]
        if array.nbytes > size:
            raise DeviceBufferError(
                f"input {name!r}: batch of {array.nbytes} bytes does not fit its {size}-byte "
                f"device buffer (sized for the calibration shape)"
            )
        self.backend.copy_htod(handle, array)
        return self.backend.device_ptr(handle)

    def ptr(self, name: str) -> int:
        return self.backend.device_ptr(self._buffers[name][0])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        buffers, self._buffers = self._buffers, {}
        for handle, _ in buffers.values():
            self.backend.free(handle)
