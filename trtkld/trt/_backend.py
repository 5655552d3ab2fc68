"""The only module of trtkld that imports ``tensorrt`` and ``pycuda`` - lazily, inside functions.

The imports and every pycuda call live here, behind small functions and one class:

- :func:`import_tensorrt` / :func:`import_pycuda`: the imports, with errors that say what is
  missing and how to get it;
- :func:`require_calibrator_api`: refuses TensorRT >= 11, which has no calibrators;
- :class:`PycudaBackend`: the :class:`~trtkld.trt.device.DeviceBackend` on pycuda, whose
  histogram kernels come from :mod:`trtkld.trt.kernels`;
Network parsing, engine building and running live in :mod:`trtkld.trt.engine`, which gets the
``tensorrt`` module object from :func:`import_tensorrt` rather than importing it.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from trtkld.errors import TensorRTUnavailableError, TrtkldError
from trtkld.trt import kernels
from trtkld.trt.device import DeviceBackend

log = logging.getLogger("trtkld.trt")

_INSTALL_HINT = (
    "TensorRT is not on PyPI for every platform: use NVIDIA's TensorRT container "
    "(nvcr.io/nvidia/tensorrt:<yy.mm>-py3, see the project's Dockerfile) or a local TensorRT "
    "install with its Python wheel, then `pip install trtkld[tensorrt]` for pycuda. "
    "Without TensorRT, `trtkld calibrate` still writes the calibration cache on CPU"
)

QDQ_HINT = (
    "use the explicit-quantization path instead: `trtkld qdq` writes a Q/DQ ONNX model from "
    "the same thresholds for a strongly typed TensorRT 11 build, and the cache written by "
    "`trtkld calibrate` can be imported by NVIDIA ModelOpt "
    "(`python -m modelopt.onnx.quantization --calibration_cache_path MODEL.cache ...`)"
)

# Calibrator base class name -> (cache header algorithm, trt.CalibrationAlgoType member).
CALIBRATOR_ALGORITHMS = {
    "IInt8EntropyCalibrator2": ("EntropyCalibration2", "ENTROPY_CALIBRATION_2"),
    "IInt8EntropyCalibrator": ("EntropyCalibration", "ENTROPY_CALIBRATION"),
    "IInt8MinMaxCalibrator": ("MinMaxCalibration", "MINMAX_CALIBRATION"),
}


# ---------------------------------------------------------------------------------- imports


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or TensorRTUnavailableError saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT's Python package `tensorrt` cannot be imported ({exc}). {_INSTALL_HINT}."
        ) from exc


def import_pycuda() -> tuple[Any, Any]:
    """``(pycuda.driver, pycuda.compiler)`` with CUDA initialised, or a clear error."""
    if importlib.util.find_spec("pycuda") is None:
        raise TensorRTUnavailableError(
            "pycuda is not installed: `pip install trtkld[tensorrt]` builds it against the CUDA "
            "toolkit (inside NVIDIA's TensorRT container this works out of the box). pycuda "
            "provides the device buffers for get_batch and the GPU histogram kernel"
        )
    try:
        driver = importlib.import_module("pycuda.driver")
        compiler = importlib.import_module("pycuda.compiler")
        driver.init()
    except Exception as exc:  # ImportError for libcuda.so.1, pycuda's LogicError/RuntimeError
        raise TensorRTUnavailableError(
            f"pycuda is installed but CUDA cannot be initialised ({type(exc).__name__}: {exc}). "
            f"It needs the NVIDIA driver (libcuda.so.1) and a visible GPU; in Docker run with "
            f"`--gpus all`"
        ) from exc
    if driver.Device.count() < 1:
        raise TensorRTUnavailableError("pycuda sees no CUDA device (check CUDA_VISIBLE_DEVICES)")
    return driver, compiler


def tensorrt_version() -> str:
    """The running TensorRT's version string, e.g. ``"10.9.0.34"``."""
    return str(import_tensorrt().__version__)


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def require_calibrator_api(trt: Any = None) -> Any:
    """The tensorrt module if it still has the implicit INT8 calibrator API (8.x - 10.x).

    TensorRT 11 removed every ``IInt8*Calibrator``, ``IBuilderConfig.int8_calibrator`` and
    ``BuilderFlag.INT8``; constructing a calibrator there fails with a pointer to the Q/DQ path.
    """
    trt = import_tensorrt() if trt is None else trt
    version = str(getattr(trt, "__version__", "unknown"))
    if _major(version) >= 11 or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise TensorRTUnavailableError(
            f"TensorRT {version} has no INT8 calibrator API: IInt8EntropyCalibrator2, "
            f"IBuilderConfig.int8_calibrator and BuilderFlag.INT8 were removed in TensorRT 11, "
            f"which builds INT8 only from explicit Q/DQ nodes. KLDCalibrator and `trtkld build` "
            f"need TensorRT 8.6 to 10.x; {QDQ_HINT}"
        )
    return trt


def default_calibrator_base() -> type:
    """``trt.IInt8EntropyCalibrator2`` of the running TensorRT (after the version check)."""
    return require_calibrator_api().IInt8EntropyCalibrator2


def calibration_algo_type(algorithm: str) -> Any:
    """``trt.CalibrationAlgoType`` member for a cache header algorithm name."""
    trt = import_tensorrt()
    for header, member in CALIBRATOR_ALGORITHMS.values():
        if header == algorithm:
            return getattr(trt.CalibrationAlgoType, member)
    raise TrtkldError(f"no TensorRT calibration algorithm type for cache algorithm {algorithm!r}")


# ---------------------------------------------------------------------------------- pycuda


class PycudaBackend(DeviceBackend):
    """Device memory and kernels through pycuda, on the device's primary context.

    The primary context is the one TensorRT (CUDA runtime API) uses, so pointers from here are
    valid in TensorRT's calls. Kernels are compiled once per backend with
    ``pycuda.compiler.SourceModule`` from :data:`trtkld.trt.kernels.SOURCE`.
    """

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        self._driver, self._compiler = import_pycuda()
        self._context = self._driver.Device(device).retain_primary_context()
        self._context.push()
        self._stream = self._driver.Stream()
        self._module: Any = None
        self._closed = False

    def _functions(self) -> Any:
        if self._module is None:
            self._module = self._compiler.SourceModule(kernels.SOURCE, no_extern_c=True)
        return self._module

    def allocate(self, nbytes: int) -> Any:
        return self._driver.mem_alloc(max(int(nbytes), 1))

    def copy_htod(self, handle: Any, host: np.ndarray) -> None:
        # Synchronous copy on the legacy default stream: `self._stream` is a blocking stream, so
        # later kernels and TensorRT's enqueue on it are ordered after this copy.
        self._driver.memcpy_htod(handle, np.ascontiguousarray(host))

    def copy_dtoh(self, host: np.ndarray, handle: Any) -> None:
        self._stream.synchronize()
        self._driver.memcpy_dtoh(host, handle)

    def copy_dtoh_ptr(self, host: np.ndarray, ptr: int) -> None:
        self._stream.synchronize()
        self._driver.memcpy_dtoh(host, int(ptr))

    def memset_zero(self, handle: Any, nbytes: int) -> None:
        self._driver.memset_d8(handle, 0, int(nbytes))

    def device_ptr(self, handle: Any) -> int:
        return int(handle)

    def free(self, handle: Any) -> None:
        handle.free()

    def _launch_chunks(self, name: str, ptr: int, count: int, extra: Sequence[Any], shared: int):
        func = self._functions().get_function(name)
        step = kernels.max_values_per_launch()
        for start in range(0, count, step):
            n = min(step, count - start)
            func(
                np.uintp(ptr + 4 * start),
                np.uint64(n),
                *extra,
                block=(kernels.BLOCK_SIZE, 1, 1),
                grid=(kernels.grid_size(n), 1),
                stream=self._stream,
                shared=shared,
            )

    def histogram(
        self, ptr: int, count: int, inv_width: float, num_bins: int, bins_handle: Any
    ) -> None:
        extra = (np.float64(inv_width), np.int32(num_bins), np.uintp(int(bins_handle)))
        if num_bins <= kernels.MAX_SHARED_BINS:
            self._launch_chunks(kernels.HISTOGRAM_KERNEL, ptr, count, extra, 4 * num_bins)
        else:
            self._launch_chunks(kernels.HISTOGRAM_GLOBAL_KERNEL, ptr, count, extra, 0)

    def stats(self, ptr: int, count: int, stats_handle: Any) -> None:
        self._launch_chunks(kernels.STATS_KERNEL, ptr, count, (np.uintp(int(stats_handle)),), 0)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.synchronize()
        finally:
            self._module = None
            self._context.pop()
