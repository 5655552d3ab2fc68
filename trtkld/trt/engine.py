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

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from trtkld.errors import ModelError
from trtkld.trt._backend import import_tensorrt, require_calibrator_api
from trtkld.trt.device import DeviceBackend

log = logging.getLogger("trtkld.trt")



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
