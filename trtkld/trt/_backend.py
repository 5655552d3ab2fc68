"""The only module of trtkld that imports ``tensorrt`` and ``pycuda`` - lazily, inside functions.

Everything TensorRT- or CUDA-specific lives here, behind small functions and two classes:

- :func:`import_tensorrt` / :func:`import_pycuda`: the imports, with errors that say what is
  missing and how to get it;
- :func:`require_calibrator_api`: refuses TensorRT >= 11, which has no calibrators;
- :class:`PycudaBackend`: the :class:`~trtkld.trt.device.DeviceBackend` on pycuda, whose
  histogram kernels come from :mod:`trtkld.trt.kernels`;
- :func:`parse_onnx`, :func:`build_int8_engine`, :class:`TensorRTEngineRunner` (an FP32 engine
  with every float tensor marked as an output, for the ``tensorrt`` histogram collector) and
  :class:`EngineSession` (runs a serialized engine on host arrays; GPU tests use it).

Written against the TensorRT 8.6 - 10.x Python API (name-based I/O: ``num_io_tensors``,
``set_tensor_address``, ``execute_async_v3``, all present since 8.5).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from trtkld.errors import ModelError, TensorRTUnavailableError, TrtkldError
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


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


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


# ---------------------------------------------------------------------------------- TensorRT


class _Logger:
    """A trt.ILogger forwarding to Python logging (built lazily: the base class is TensorRT's)."""

    _instance: Any = None

    @classmethod
    def get(cls, trt: Any) -> Any:
        if cls._instance is None:
            levels = {
                trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
                trt.ILogger.Severity.ERROR: logging.ERROR,
                trt.ILogger.Severity.WARNING: logging.WARNING,
                trt.ILogger.Severity.INFO: logging.DEBUG,
                trt.ILogger.Severity.VERBOSE: logging.DEBUG,
            }

            class Forward(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.messages: list[tuple[Any, str]] = []

                def log(self, severity: Any, msg: str) -> None:
                    self.messages.append((severity, msg))
                    log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

            cls._instance = Forward()
        return cls._instance


def _explicit_batch_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    # Deprecated (and implied) in TensorRT 10, required in 8.x.
    return 0 if flag is None else 1 << int(flag)


def parse_onnx(onnx_path: str | os.PathLike) -> tuple[Any, Any, Any, Any]:
    """``(trt, builder, network, parser)`` for an ONNX file; ModelError with parser messages."""
    trt = require_calibrator_api()
    path = os.fspath(onnx_path)
    if not os.path.isfile(path):
        raise ModelError(f"ONNX model {path}: no such file")
    logger = _Logger.get(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_explicit_batch_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT's ONNX parser rejected {path}: " + "; ".join(errors))
    return trt, builder, network, parser


def network_input_shapes(network: Any) -> dict[str, tuple[int, ...]]:
    """Network input name -> shape as TensorRT sees it (-1 for a runtime dimension)."""
    return {
        network.get_input(i).name: tuple(network.get_input(i).shape)
        for i in range(network.num_inputs)
    }


def network_tensor_names(network: Any, *, float_only: bool = True) -> list[str]:
    """Every execution tensor of a network (inputs, then layer outputs), in network order.

    These are the names a calibration cache can hold; with ``float_only`` the integer and bool
    tensors, which never get a scale, are left out.
    """
    trt = import_tensorrt()
    floats = {trt.float32, trt.float16}
    if hasattr(trt, "bfloat16"):
        floats.add(trt.bfloat16)
    names: list[str] = []
    seen: set[str] = set()

    def add(t: Any) -> None:
        if t is None or t.name in seen:
            return
        if getattr(t, "is_shape_tensor", False) and not getattr(t, "is_execution_tensor", True):
            return
        if float_only and t.dtype not in floats:
            return
        seen.add(t.name)
        names.append(t.name)

    for i in range(network.num_inputs):
        add(network.get_input(i))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            add(layer.get_output(j))
    return names


def calibration_profile(
    builder: Any, network: Any, shapes: Mapping[str, Sequence[int]]
) -> Optional[Any]:
    """A profile when any input has a runtime dimension: opt = max = ``shapes`` (the
    calibration shape the calibrator's buffers hold), min = the same with a runtime batch
    axis at 1, so the engine also runs smaller batches."""
    inputs = network_input_shapes(network)
    if all(d >= 0 for shape in inputs.values() for d in shape):
        return None
    profile = builder.create_optimization_profile()
    for name, net_shape in inputs.items():
        if name not in shapes:
            raise ModelError(
                f"input {name!r} has runtime dimensions {list(net_shape)} but no calibration "
                f"shape was given (known: {sorted(shapes)})"
            )
        shape = tuple(int(d) for d in shapes[name])
        if len(shape) != len(net_shape) or any(
            d >= 0 and d != s for d, s in zip(net_shape, shape)
        ):
            raise ModelError(
                f"input {name!r}: calibration shape {list(shape)} does not fit the network "
                f"shape {list(net_shape)}"
            )
        low = ((1,) + shape[1:]) if shape and net_shape[0] < 0 else shape
        profile.set_shape(name, low, shape, shape)
    return profile


def build_int8_engine(
    onnx_path: str | os.PathLike,
    calibrator: Any,
    *,
    calibration_shapes: Mapping[str, Sequence[int]],
    fp16: bool = False,
    workspace_bytes: Optional[int] = None,
) -> tuple[Optional[bytes], list[str]]:
    """Build an INT8 engine with ``calibrator``; ``(serialized plan or None, tensor names)``.

    ``tensor names`` are the network's float tensors (candidates for a scale). For networks
    with runtime dimensions the same ``calibration_shapes`` serve as build profile and as the
    calibration profile (OPT), which is what the calibrator's buffers are sized to.
    """
    trt, builder, network, _parser = parse_onnx(onnx_path)
    names = network_tensor_names(network)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.int8_calibrator = calibrator
    profile = calibration_profile(builder, network, calibration_shapes)
    if profile is not None:
        config.add_optimization_profile(profile)
        config.set_calibration_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return (None if plan is None else bytes(plan)), names


class EngineSession:
    """Runs a deserialized engine on host arrays (name-based I/O); used by GPU tests/eval.

    ``run({input: array}) -> {output: array}``. Device buffers come from ``backend`` and are
    freed by ``close()``.
    """

    def __init__(self, plan: bytes, backend: DeviceBackend) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self.backend = backend
        self._runtime = trt.Runtime(_Logger.get(trt))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize the engine plan")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self.output_names = [n for n in names if n not in self.input_names]
        self._buffers: dict[str, tuple[Any, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        entry = self._buffers.get(name)
        if entry is None or entry[1] < nbytes:
            if entry is not None:
                self.backend.free(entry[0])
            entry = (self.backend.allocate(nbytes), nbytes)
            self._buffers[name] = entry
        return self.backend.device_ptr(entry[0])

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        for name in self.input_names:
            if name not in inputs:
                raise ModelError(f"engine input {name!r} missing; given {sorted(inputs)}")
            arr = np.ascontiguousarray(inputs[name])
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            self.backend.copy_htod(self._buffers[name][0], arr)
            self.context.set_tensor_address(name, ptr)

    def set_input_pointers(
        self, ptrs: Mapping[str, int], shapes: Mapping[str, Sequence[int]]
    ) -> None:
        for name in self.input_names:
            self.context.set_input_shape(name, tuple(int(d) for d in shapes[name]))
            self.context.set_tensor_address(name, int(ptrs[name]))

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def execute(self) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
        """Bind outputs, enqueue; ``{output: (device ptr, shape, dtype)}`` (not synchronized)."""
        out: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        for name in self.output_names:
            shape = self.output_shape(name)
            if any(d < 0 for d in shape):
                raise ModelError(
                    f"output {name!r} has a data-dependent shape {list(shape)}; not supported"
                )
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            ptr = self._buffer(name, max(1, int(np.prod(shape))) * dtype.itemsize)
            self.context.set_tensor_address(name, ptr)
            out[name] = (ptr, shape, dtype)
        if not self.context.execute_async_v3(self.backend.stream_handle):
            raise ModelError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.set_inputs(inputs)
        result = {}
        for name, (_ptr, shape, dtype) in self.execute().items():
            host = np.empty(shape, dtype=dtype)
            self.backend.copy_dtoh(host, self._buffers[name][0])
            result[name] = host
        return result

    def close(self) -> None:
        buffers, self._buffers = self._buffers, {}
        for handle, _ in buffers.values():
            self.backend.free(handle)
        self.context = None
        self.engine = None


class TensorRTEngineRunner:
    """FP32 engine of an ONNX model with every float32 tensor marked as a network output.

    Used by the ``tensorrt`` histogram collector so that histograms carry TensorRT's own tensor
    names, parser-made tensors included. TF32 is disabled: the activations are FP32 values.
    ``profile``: input name -> (min, opt, max) shapes for networks with runtime dimensions.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]],
        backend: DeviceBackend,
    ) -> None:
        trt, builder, network, _parser = parse_onnx(onnx_path)
        input_names = {network.get_input(i).name for i in range(network.num_inputs)}
        ordered: list[str] = []  # network order, which histograms keep
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            for j in range(layer.num_outputs):
                t = layer.get_output(j)
                if t.name in input_names or t.dtype != trt.float32:
                    continue
                if getattr(t, "is_shape_tensor", False):
                    continue
                ordered.append(t.name)
                if not t.is_network_output:
                    network.mark_output(t)
        self.float_inputs = [
            network.get_input(i).name
            for i in range(network.num_inputs)
            if network.get_input(i).dtype == trt.float32
        ]
        config = builder.create_builder_config()
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        shapes = network_input_shapes(network)
        if any(d < 0 for s in shapes.values() for d in s):
            opt_profile = builder.create_optimization_profile()
            for name in shapes:
                lo, opt, hi = profile[name]
                opt_profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
            config.add_optimization_profile(opt_profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelError(
                f"TensorRT could not build the FP32 all-outputs engine of {os.fspath(onnx_path)} "
                f"for histogram collection (see the TensorRT log); use collector='onnxruntime'"
            )
        self._session = EngineSession(bytes(plan), backend)
        self.input_names = list(self._session.input_names)
        engine_outputs = set(self._session.output_names)
        # Only float32 outputs feed the float32 histogram kernel.
        self.output_names = [
            n
            for n in ordered
            if n in engine_outputs and self._session.engine.get_tensor_dtype(n) == trt.float32
        ]

    def run(
        self, ptrs: Mapping[str, int], shapes: Mapping[str, Sequence[int]]
    ) -> dict[str, tuple[int, int]]:
        """Run one batch already in device memory; ``{output: (device ptr, element count)}``."""
        self._session.set_input_pointers(ptrs, shapes)
        outs = self._session.execute()
        return {n: (outs[n][0], int(np.prod(outs[n][1]))) for n in self.output_names}

    def close(self) -> None:
        self._session.close()
