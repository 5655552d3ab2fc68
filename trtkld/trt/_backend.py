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
import shutil
import weakref
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from trtkld.errors import TensorRTUnavailableError, TrtkldError
from trtkld.trt import kernels
from trtkld.trt.device import DeviceBackend

log = logging.getLogger("trtkld.trt")

_INSTALL_HINT = (
    "On a GPU machine: `pip install \"tensorrt-cu12<11\" pycuda` (pin below 11: a plain "
    "`pip install tensorrt` now gives TensorRT 11, which has no INT8 calibrators), or use "
    "NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt:<yy.mm>-py3 with TensorRT 10.x, see "
    "the project's Dockerfile) and `pip install trtkld[tensorrt]` for pycuda. "
    "Without TensorRT, `trtkld calibrate` still writes the calibration cache on CPU, and "
    "`trtkld qdq` the Q/DQ model"
)

QDQ_HINT = (
    "use the explicit-quantization path instead: `trtkld qdq` writes a Q/DQ ONNX model from "
    "the same thresholds for a strongly typed TensorRT 11 build, and the cache written by "
    "`trtkld calibrate` can be imported by NVIDIA ModelOpt "
    "(`python -m modelopt.onnx.quantization --calibration_cache_path MODEL.cache ...`)"
)

# Every attribute of the `tensorrt` module trtkld uses (dotted paths from the module), for
# the API-surface check against the real bindings of each supported version. Members that
# only some versions have are read with getattr(..., None) and listed in OPTIONAL_TENSORRT_API.
TENSORRT_API = (
    "__version__",
    "IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator",
    "IInt8EntropyCalibrator2.__init__", "IInt8EntropyCalibrator2.get_batch",
    "IInt8EntropyCalibrator2.get_batch_size", "IInt8EntropyCalibrator2.read_calibration_cache",
    "IInt8EntropyCalibrator2.write_calibration_cache", "IInt8EntropyCalibrator2.get_algorithm",
    "CalibrationAlgoType.ENTROPY_CALIBRATION_2", "CalibrationAlgoType.ENTROPY_CALIBRATION",
    "CalibrationAlgoType.MINMAX_CALIBRATION",
    "ILogger", "ILogger.__init__", "ILogger.log", "ILogger.Severity.INTERNAL_ERROR",
    "ILogger.Severity.ERROR", "ILogger.Severity.WARNING", "ILogger.Severity.INFO",
    "ILogger.Severity.VERBOSE",
    "Builder", "Builder.create_network", "Builder.create_builder_config",
    "Builder.create_optimization_profile", "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    "OnnxParser", "OnnxParser.parse_from_file", "OnnxParser.num_errors", "OnnxParser.get_error",
    "INetworkDefinition.num_inputs", "INetworkDefinition.get_input",
    "INetworkDefinition.num_layers", "INetworkDefinition.get_layer",
    "INetworkDefinition.mark_output",
    "ILayer.num_outputs", "ILayer.get_output",
    "ITensor.name", "ITensor.shape", "ITensor.dtype", "ITensor.is_network_output",
    "ITensor.is_shape_tensor", "ITensor.is_execution_tensor",
    "IBuilderConfig.set_flag", "IBuilderConfig.clear_flag", "IBuilderConfig.int8_calibrator",
    "IBuilderConfig.add_optimization_profile", "IBuilderConfig.set_calibration_profile",
    "IBuilderConfig.num_optimization_profiles", "IBuilderConfig.set_memory_pool_limit",
    "IOptimizationProfile.set_shape",
    "BuilderFlag.INT8", "BuilderFlag.FP16", "BuilderFlag.TF32", "MemoryPoolType.WORKSPACE",
    "Runtime", "Runtime.deserialize_cuda_engine",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
    "IExecutionContext.get_tensor_shape", "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT", "float32", "float16", "nptype",
)
# Read with getattr(..., None): absent in some supported versions (bfloat16 came in 9.0).
OPTIONAL_TENSORRT_API = ("bfloat16",)


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
    from trtkld.trt.bases import algo_type_member

    return getattr(import_tensorrt().CalibrationAlgoType, algo_type_member(algorithm))


# ---------------------------------------------------------------------------------- pycuda


def _release_context(driver: Any, context: Any) -> None:
    """Pop ``context`` if this backend pushed it and it is still the current one."""
    if context is None:
        return
    try:
        current = driver.Context.get_current()
    except Exception:  # pycuda already torn down at exit: nothing left to pop
        return
    if current is not None and current == context:
        driver.Context.pop()
    else:
        log.warning("pycuda context of trtkld's device backend is not current; not popped")


NVCC_HINT = (
    "compiling trtkld's CUDA histogram kernels needs either nvcc (the CUDA toolkit, e.g. "
    "`apt-get install cuda-nvcc-12-x` or NVIDIA's CUDA/TensorRT container) on PATH, or NVRTC "
    "through cuda-python (`pip install \"cuda-python<13\" nvidia-cuda-nvrtc-cu12`)"
)


def import_nvrtc() -> Optional[Any]:
    """cuda-python's ``nvrtc`` module (new or old layout), or None if not installed."""
    for name in ("cuda.bindings.nvrtc", "cuda.nvrtc"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def nvrtc_ptx(source: str, arch: tuple[int, int], nvrtc: Any = None) -> bytes:
    """PTX of ``source`` for compute capability ``arch``, compiled by NVRTC (no nvcc)."""
    nvrtc = import_nvrtc() if nvrtc is None else nvrtc
    if nvrtc is None:
        raise TensorRTUnavailableError(f"cuda-python's nvrtc is not installed; {NVCC_HINT}")

    def ok(result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise TrtkldError(f"NVRTC failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    prog = ok(nvrtc.nvrtcCreateProgram(source.encode(), b"trtkld_kernels.cu", 0, [], []))
    opts = [f"--gpu-architecture=compute_{arch[0]}{arch[1]}".encode(), b"--std=c++14"]
    try:
        ok(nvrtc.nvrtcCompileProgram(prog, len(opts), opts))
    except TrtkldError as exc:
        size = ok(nvrtc.nvrtcGetProgramLogSize(prog))
        text = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, text)
        raise TrtkldError(f"{exc}: {text.decode(errors='replace').strip()}") from None
    size = ok(nvrtc.nvrtcGetPTXSize(prog))
    ptx = b" " * size
    ok(nvrtc.nvrtcGetPTX(prog, ptx))
    return ptx


class PycudaBackend(DeviceBackend):
    """Device memory and kernels through pycuda.

    Context rules (create it BEFORE the build, never inside a TensorRT callback):

    - if the thread already has a current context (user code did ``import pycuda.autoinit``,
      or pushed its own), it is used as it is and never pushed or popped;
    - otherwise the device's primary context (the one TensorRT's runtime API uses, so
      pointers from here are valid in TensorRT's calls) is retained and pushed once, here;
    - nothing is pushed or popped afterwards until :meth:`close`, and a ``weakref.finalize``
      pops it if the backend is dropped unclosed or at interpreter exit, so pycuda does not
      abort with "context stack was not empty".

    Kernels are compiled once per backend: by nvcc through ``pycuda.compiler.SourceModule``
    when nvcc is on PATH, else by NVRTC through cuda-python; neither gives a clear error.
    """

    name = "pycuda"

    def __init__(self, device: int = 0, kernel_compiler: str = "auto") -> None:
        if kernel_compiler not in ("auto", "nvcc", "nvrtc"):
            raise TrtkldError(f"kernel_compiler {kernel_compiler!r}: choose auto, nvcc or nvrtc")
        self.kernel_compiler = kernel_compiler
        self._driver, self._compiler = import_pycuda()
        current = self._driver.Context.get_current()
        if current is not None:
            self._context = current
            pushed = None
        else:
            self._context = self._driver.Device(device).retain_primary_context()
            self._context.push()
            pushed = self._context
        self.owns_context = pushed is not None
        self._stream = self._driver.Stream()
        self._module: Any = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _release_context, self._driver, pushed)
        self._finalizer.atexit = True

    def _functions(self) -> Any:
        if self._module is None:
            self._module = self._compile()
        return self._module

    def _compile(self) -> Any:
        use = self.kernel_compiler
        if use == "nvcc" or (use == "auto" and shutil.which("nvcc") is not None):
            if shutil.which("nvcc") is None:
                raise TensorRTUnavailableError(f"nvcc is not on PATH: {NVCC_HINT}")
            return self._compiler.SourceModule(kernels.SOURCE, no_extern_c=True)
        if import_nvrtc() is not None:
            arch = self._context.get_device().compute_capability()
            return self._driver.module_from_buffer(nvrtc_ptx(kernels.SOURCE, tuple(arch)))
        raise TensorRTUnavailableError(
            f"nvcc is not on PATH and cuda-python is not installed: {NVCC_HINT}"
        )

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
        """Wait for queued work, then pop the context if this backend pushed it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.synchronize()
        finally:
            self._module = None
            self._finalizer()
