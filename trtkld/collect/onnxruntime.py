"""Run an ONNX model in ONNX Runtime with every intermediate float tensor exposed as an output.

This module owns model instrumentation only: which tensors are activations, how they are exposed,
and running one batch. It knows nothing about histograms or searches.

Tensor names are the ONNX names, which are TensorRT's ITensor names for an ONNX-parsed network.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Union

import numpy as np

from trtkld.data import Batch
from trtkld.errors import DataError, ModelError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Ops whose outputs describe shapes, not data: anything computed only from them (and constants)
# is a shape-only subgraph and has no activation range worth calibrating.
_SHAPE_OPS = {"Shape", "Size"}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or re.fullmatch(p, name) is not None for p in patterns)


def _load_model(model: Union[PathLike, onnx.ModelProto]):  # noqa: F821
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelError(f"ONNX model {path!r} does not exist")
    try:
        return onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError / protobuf errors of several kinds
        raise ModelError(f"cannot load ONNX model {path!r}: {exc}") from exc


def activation_tensor_names(model) -> list[str]:
    """Names of every float activation of ``model`` (an ``onnx.ModelProto``), in graph order.

    Graph inputs first, then node outputs in node order. Integer/bool tensors and tensors that
    only depend on shapes (outputs of Shape/Size and what is computed from them and constants)
    are skipped. Tensors whose type shape inference cannot tell are kept; the collector drops
    them at run time if they turn out not to be float.
    """
    import onnx

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # inference is best effort: unknown types are checked at run time
        logger.warning("ONNX shape inference failed (%s); types are checked at run time", exc)
        inferred = model
    elem_types: dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
        inferred.graph.output
    ):
        if value.type.HasField("tensor_type"):
            elem_types[value.name] = value.type.tensor_type.elem_type

    initializers = {init.name for init in graph.initializer}
    constant_like: set[str] = set(initializers)
    shape_only: set[str] = set()
    names: list[str] = []
    seen: set[str] = set()

    def keep(name: str) -> None:
        if name and name not in seen:
            seen.add(name)
            names.append(name)

    for value in graph.input:
        if value.name not in initializers and elem_types.get(value.name, 0) in _FLOAT_TYPES:
            keep(value.name)

    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in _SHAPE_OPS:
            shape_only.update(o for o in node.output if o)
            continue
        if node.op_type == "Constant" or (inputs and all(i in constant_like for i in inputs)):
            constant_like.update(o for o in node.output if o)
        if inputs and all(i in shape_only or i in constant_like for i in inputs) and any(
            i in shape_only for i in inputs
        ):
            shape_only.update(o for o in node.output if o)
            continue
        for out in node.output:
            if not out:
                continue
            elem = elem_types.get(out, 0)
            if elem in _FLOAT_TYPES or elem == 0:
                keep(out)
    return names


class OnnxRuntimeCollector:
    """ONNX Runtime session over ``model`` that returns every selected float activation.

    Args:
        model: path to an ``.onnx`` file or an ``onnx.ModelProto``.
        include: names or regular expressions (full match); only matching tensors are kept.
        exclude: names or regular expressions (full match) to drop, applied after ``include``.
        providers: ONNX Runtime execution providers (default: CPU).

    ORT graph optimisations are disabled so that every tensor keeps the value the unfused ONNX
    graph defines, which is what TensorRT calibrates (and keeps every ONNX tensor name).
    """

    def __init__(
        self,
        model: Union[PathLike, onnx.ModelProto],  # noqa: F821
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        providers: Optional[Sequence[str]] = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.model_name = model if isinstance(model, (str, os.PathLike)) else "<ModelProto>"
        proto = _load_model(model)
        for pattern in list(include or []) + list(exclude or []):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ModelError(f"tensor pattern {pattern!r} is not a valid regex: {exc}") from exc
        names = activation_tensor_names(proto)
        if include:
            names = [n for n in names if _matches(n, include)]
        if exclude:
            names = [n for n in names if not _matches(n, exclude)]
        if not names:
            raise ModelError(
                f"model {self.model_name!s}: no float activation tensor is left to calibrate "
                f"(include={list(include or [])}, exclude={list(exclude or [])})"
            )

        exposed = onnx.ModelProto()
        exposed.CopyFrom(proto)
        graph_inputs = {i.name for i in exposed.graph.input}
        existing_outputs = {o.name for o in exposed.graph.output}
        for name in names:
            if name not in existing_outputs and name not in graph_inputs:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        # Idle ORT worker threads sleep instead of spinning: spinning burnt ~30% more CPU per
        # calibration (bench/calibrate.py) and starves the histogram threads and any other
        # process on the cores. Thread count and outputs are unchanged.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                exposed.SerializeToString(),
                sess_options=options,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load {self.model_name!s}: {exc}") from exc
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [n for n in names if n not in graph_inputs]
        self._names = names
        self._checked_types = False

    @property
    def tensor_names(self) -> list[str]:
        """Selected activation names, graph inputs first, then in node order."""
        return list(self._names)

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Run one batch; returns ``{tensor name: array}`` for every selected tensor.

        Non-float tensors whose type was unknown before the first run are dropped for good.
        """
        missing = [n for n in self._input_names if n not in batch.inputs]
        if missing:
            raise DataError(
                f"batch from {', '.join(batch.sources) or '<unknown>'} lacks model input(s) "
                f"{missing}; it has {sorted(batch.inputs)}"
            )
        feeds = {n: batch.inputs[n] for n in self._input_names}
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:
            raise ModelError(
                f"ONNX Runtime failed on the batch from {', '.join(batch.sources)}: {exc}"
            ) from exc
        result: dict[str, np.ndarray] = {}
        for name in self._names:
            if name in feeds:
                result[name] = np.asarray(feeds[name])
        for name, value in zip(self._output_names, values):
            result[name] = value
        if not self._checked_types:
            self._checked_types = True
            dropped = [n for n, v in result.items() if not np.issubdtype(v.dtype, np.floating)]
            if dropped:
                logger.info("skipping %d non-float tensors: %s", len(dropped), dropped[:10])
                self._names = [n for n in self._names if n not in dropped]
                self._output_names = [n for n in self._output_names if n not in dropped]
                for n in dropped:
                    result.pop(n)
        return {n: result[n] for n in self._names}

    def runs(
        self, batches: Iterable[Batch], *, prefetch: bool = True
    ) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        """Yield ``(batch, self.run(batch))`` for every batch, in order.

        With ``prefetch`` the model runs batch k+1 on a background thread while the caller
        works on batch k (ONNX Runtime and the numba kernels both release the GIL). At most two
        batches of activations are alive at once if the caller drops its reference to batch k
        before asking for k+1; without ``prefetch``, one. Errors surface in batch order.
        """
        if not prefetch:
            for batch in batches:
                yield batch, self.run(batch)
            return
        iterator = iter(batches)
        with ThreadPoolExecutor(1, thread_name_prefix="trtkld-collect") as pool:
            pending: Optional[tuple[Batch, Future]] = None
            try:
                batch = next(iterator, None)
                if batch is None:
                    return
                pending = (batch, pool.submit(self.run, batch))
                while pending is not None:
                    batch, future = pending
                    activations = future.result()
                    following = next(iterator, None)
                    pending = (
                        None if following is None
                        else (following, pool.submit(self.run, following))
                    )
                    yield batch, activations
                    del activations  # the caller's copy is the only one left
            finally:
                if pending is not None:  # caller stopped early or an error: wait, discard
                    pending[1].cancel()
                    try:
                        pending[1].result()
                    except Exception:  # noqa: BLE001 - its error would be a later batch's
                        pass
