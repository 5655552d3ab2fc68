"""TensorRT networks and engines: ONNX parsing, INT8 builds, FP32 engines that expose every tensor.

The ``tensorrt`` module object comes from :func:`trtkld.trt._backend.import_tensorrt` (the only
importer); device memory goes through a :class:`~trtkld.trt.device.DeviceBackend`.

- :func:`parse_onnx`, :func:`build_int8_engine`, :class:`TensorRTEngineRunner` (an FP32 engine
  with every float tensor marked as an output, for the ``tensorrt`` histogram collector) and
  :class:`EngineSession` (runs a serialized engine on host arrays; GPU tests use it).

Written against the TensorRT 8.6 - 10.x Python API (name-based I/O: ``num_io_tensors``,
``set_tensor_address``, ``execute_async_v3``, all present since 8.5).
"""
from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from trtkld.errors import ModelError
from trtkld.trt import profiles
from trtkld.trt._backend import import_tensorrt, require_calibrator_api
from trtkld.trt.device import DeviceBackend

log = logging.getLogger("trtkld.trt")



class _Logger:
    """A trt.ILogger forwarding to Python logging (built lazily: the base class is TensorRT's).

    TensorRT drops messages below ``min_severity`` before calling ``log`` (default WARNING;
    ``TRTKLD_TRT_LOG=verbose|info|warning|error`` changes it). Only the last
    :data:`KEEP_ERRORS` errors are kept (``errors``), for error messages; nothing else is stored.
    """

    KEEP_ERRORS = 20
    _instance: Any = None

    @classmethod
    def get(cls, trt: Any, min_severity: Optional[str] = None) -> Any:
        severity = trt.ILogger.Severity
        wanted = (min_severity or os.environ.get("TRTKLD_TRT_LOG") or "warning").upper()
        if not hasattr(severity, wanted):
            raise ModelError(
                f"TensorRT log level {wanted.lower()!r}: choose verbose, info, warning or error"
            )
        if cls._instance is None or cls._instance.trt is not trt:
            levels = {
                severity.INTERNAL_ERROR: logging.CRITICAL,
                severity.ERROR: logging.ERROR,
                severity.WARNING: logging.WARNING,
                severity.INFO: logging.DEBUG,
                severity.VERBOSE: logging.DEBUG,
            }
            errors = {severity.INTERNAL_ERROR, severity.ERROR}

            class Forward(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.trt = trt
                    self.errors: collections.deque = collections.deque(maxlen=cls.KEEP_ERRORS)

                def log(self, sev: Any, msg: str) -> None:
                    if int(sev) > int(self.min_severity):  # VERBOSE > INFO > ... > ERROR
                        return
                    if sev in errors:
                        self.errors.append(msg)
                    log.log(levels.get(sev, logging.INFO), "TensorRT: %s", msg)

            cls._instance = Forward()
        cls._instance.min_severity = getattr(severity, wanted)
        return cls._instance


def network_creation_flags(trt: Any) -> int:
    """``create_network`` flags: EXPLICIT_BATCH on TensorRT 8.x; 0 from 10.0 (explicit batch is
    the only mode, and the flag is deprecated and ignored)."""
    if _major(getattr(trt, "__version__", "0")) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def parse_onnx(onnx_path: str | os.PathLike) -> tuple[Any, Any, Any, Any]:
    """``(trt, builder, network, parser)`` for an ONNX file; ModelError with parser messages."""
    trt = require_calibrator_api()
    path = os.fspath(onnx_path)
    if not os.path.isfile(path):
        raise ModelError(f"ONNX model {path}: no such file")
    logger = _Logger.get(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt))
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


def _profile_object(builder: Any, profile: profiles.Profile) -> Any:
    obj = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        obj.set_shape(name, lo, opt, hi)
    return obj


def calibration_profile(
    builder: Any, network: Any, shapes: Mapping[str, Sequence[int]]
) -> Optional[Any]:
    """A profile when any input has a runtime dimension: opt = max = ``shapes`` (the
    calibration shape the calibrator's buffers hold), min = the same with a runtime batch
    axis at 1 (:func:`trtkld.trt.profiles.fixed_profile`); None for a static network."""
    inputs = network_input_shapes(network)
    if not profiles.is_dynamic(inputs):
        return None
    return _profile_object(builder, profiles.fixed_profile(inputs, shapes))


def configure_int8(
    trt: Any,
    builder: Any,
    network: Any,
    config: Any,
    calibrator: Any,
    *,
    calibration_shapes: Mapping[str, Sequence[int]],
    min_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    opt_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    max_shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> Optional[profiles.Profile]:
    """INT8 with ``calibrator``; for a network with runtime dimensions, a build profile and a
    separate calibration profile. Returns the build profile's shapes (None if static).

    The calibration profile is :func:`calibration_profile` (what the calibrator's buffers
    hold). The build profile, which decides the shapes the engine accepts, takes each input's
    MIN/OPT/MAX from ``min_shapes`` / ``opt_shapes`` / ``max_shapes`` where given, else the
    calibration profile's.
    """
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    inputs = network_input_shapes(network)
    given = any((min_shapes, opt_shapes, max_shapes))
    if not profiles.is_dynamic(inputs):
        if given:
            log.warning("the network has no runtime dimension: shape options are ignored")
        return None
    calib = profiles.fixed_profile(inputs, calibration_shapes)
    build = profiles.build_profile(
        inputs, min_shapes=min_shapes or {}, opt_shapes=opt_shapes or {},
        max_shapes=max_shapes or {}, default=calib,
    )
    config.add_optimization_profile(_profile_object(builder, build))
    config.set_calibration_profile(_profile_object(builder, calib))
    return build


def build_int8_engine(
    onnx_path: str | os.PathLike,
    calibrator: Any,
    *,
    calibration_shapes: Mapping[str, Sequence[int]],
    min_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    opt_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    max_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    fp16: bool = False,
    workspace_bytes: Optional[int] = None,
) -> tuple[Optional[bytes], list[str]]:
    """Build an INT8 engine with ``calibrator``; ``(serialized plan or None, tensor names)``.

    ``tensor names`` are the network's float tensors (candidates for a scale). Our cache is
    prepared BEFORE the build (``calibrator.prepare()``), so a ``tensorrt`` collector's own
    TensorRT build never runs inside this one. Shapes: see :func:`configure_int8`.
    """
    prepare = getattr(calibrator, "prepare", None)
    if prepare is not None and getattr(calibrator, "method", None) != "tensorrt":
        prepare()
    trt, builder, network, _parser = parse_onnx(onnx_path)
    names = network_tensor_names(network)
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    configure_int8(
        trt, builder, network, config, calibrator, calibration_shapes=calibration_shapes,
        min_shapes=min_shapes, opt_shapes=opt_shapes, max_shapes=max_shapes,
    )
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
            want = self.input_dtype(name)
            if arr.dtype != want:
                raise ModelError(
                    f"engine input {name!r}: host array has dtype {arr.dtype}, the engine "
                    f"expects {want}"
                )
            self._set_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            self.backend.copy_htod(self._buffers[name][0], arr)
            self.context.set_tensor_address(name, ptr)

    def set_input_pointers(
        self, ptrs: Mapping[str, int], shapes: Mapping[str, Sequence[int]]
    ) -> None:
        for name in self.input_names:
            self._set_shape(name, shapes[name])
            self.context.set_tensor_address(name, int(ptrs[name]))

    def input_dtype(self, name: str) -> np.dtype:
        """numpy dtype of an engine input (what the host data must be)."""
        return np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))

    def _set_shape(self, name: str, shape: Sequence[int]) -> None:
        shape = tuple(int(d) for d in shape)
        if not self.context.set_input_shape(name, shape):
            raise ModelError(
                f"engine input {name!r}: TensorRT refused shape {list(shape)} (outside the "
                f"engine's optimization profile, or a static dimension differs: engine shape "
                f"{list(self.engine.get_tensor_shape(name))})"
            )

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
        if profiles.is_dynamic(shapes):
            checked = profiles.check_profile(shapes, profile)  # a clear error, not TensorRT's
            config.add_optimization_profile(_profile_object(builder, checked))
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

    def input_dtype(self, name: str) -> np.dtype:
        """numpy dtype the engine expects for input ``name``."""
        return self._session.input_dtype(name)

    def run(
        self, ptrs: Mapping[str, int], shapes: Mapping[str, Sequence[int]]
    ) -> dict[str, tuple[int, int]]:
        """Run one batch already in device memory; ``{output: (device ptr, element count)}``."""
        self._session.set_input_pointers(ptrs, shapes)
        outs = self._session.execute()
        return {n: (outs[n][0], int(np.prod(outs[n][1]))) for n in self.output_names}

    def close(self) -> None:
        self._session.close()
