"""Run one Q/DQ model with activation scales given per run (no new model or session per trial).

The activation scale initializers of a Q/DQ model written by :func:`trtkld.qdq.write_qdq_model`
are also declared as graph inputs, which ONNX Runtime lets a run override; each trial of a
threshold search is then one ``run`` with new scale values.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import onnx

from trtkld.errors import ModelError
from trtkld.fidelity.session import ort_session
from trtkld.qdq import DEFAULT_OP_TYPES, is_usable_scale, write_qdq_model


def lift_scale_inputs(proto: onnx.ModelProto, tensors: Iterable[str]) -> dict[str, str]:
    """Declare each activation's Q/DQ scale initializer as a graph input (in place).

    ONNX Runtime treats an initializer that is also a graph input as a default value a run may
    override, and never constant-folds it. Returns tensor -> scale initializer name.

    Raises:
        ModelError: a tensor without a QuantizeLinear, or a scale initializer shared with
            another tensor or a weight (feeding it would change both).
    """
    inits = {i.name: i for i in proto.graph.initializer}
    q_of: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            q_of.setdefault(node.input[0], []).append(node)
    q_outputs = {n.output[0]: n.input[0] for nodes in q_of.values() for n in nodes}
    users: dict[str, set[str]] = {}  # scale initializer -> owners (tensor or dq input)
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
            owner = node.input[0]
            if node.op_type == "DequantizeLinear":
                owner = q_outputs.get(owner, owner)
            users.setdefault(node.input[1], set()).add(owner)
    mapping: dict[str, str] = {}
    for tensor in tensors:
        nodes = q_of.get(tensor)
        if not nodes:
            raise ModelError(f"tensor {tensor!r}: no QuantizeLinear reads it in the Q/DQ model")
        names = {n.input[1] for n in nodes}
        if len(names) != 1:
            raise ModelError(f"tensor {tensor!r}: expected one scale initializer, found "
                             f"{sorted(names)}")
        (name,) = names
        if name not in inits:
            raise ModelError(f"tensor {tensor!r}: scale {name!r} is not an initializer")
        if users.get(name, set()) != {tensor}:
            raise ModelError(f"tensor {tensor!r}: scale initializer {name!r} is shared with "
                             f"{sorted(users.get(name, set()) - {tensor})}")
        mapping[tensor] = name
    declared = {i.name for i in proto.graph.input}
    for name in mapping.values():
        if name not in declared:
            init = inits[name]
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return mapping


class ScaleFeedSession:
    """One Q/DQ model whose activation scales are given per run.

    ``run(feeds, scales)`` equals, bit for bit, running the model
    ``write_qdq_model(model, scales, ...)`` in :func:`trtkld.fidelity.session.ort_session`
    (tested).
    The activations quantized are those that ``template_scales`` quantizes; every later scale
    must be usable (finite, positive, normal float32), or that model would quantize fewer.
    """

    def __init__(self, model: Union[str, Path, onnx.ModelProto],
                 template_scales: Mapping[str, float], *,
                 op_types: Sequence[str] = DEFAULT_OP_TYPES, per_channel: bool = True):
        with tempfile.TemporaryDirectory(prefix="trtkld-refine-") as tmp:
            path = Path(tmp) / "refine.int8.onnx"
            summary = write_qdq_model(model, template_scales, path, op_types=op_types,
                                      per_channel=per_channel, warn_left_float=False)
            proto = onnx.load(str(path))
        self.tensors: list[str] = list(summary.activations)
        self.left_float = dict(summary.left_float)
        self._inputs = lift_scale_inputs(proto, self.tensors)
        self._shapes = {
            t: tuple(i.dims) for i in proto.graph.initializer
            for t, n in self._inputs.items() if i.name == n
        }
        self._session = ort_session(proto.SerializeToString(), quantized=True)
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray],
            scales: Mapping[str, float]) -> list[np.ndarray]:
        """Model outputs (``output_names`` order) with ``scales`` for every quantized tensor."""
        full = dict(feeds)
        for t, name in self._inputs.items():
            if t not in scales:
                raise ModelError(f"tensor {t!r}: no scale given for a quantized activation")
            s = np.float32(scales[t])
            if not is_usable_scale(s):
                raise ModelError(f"tensor {t!r}: scale {s!r} is not a finite positive normal "
                                 "float32")
            full[name] = np.full(self._shapes[t], s, dtype=np.float32)
        return self._session.run(self.output_names, full)
