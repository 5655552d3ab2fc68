"""Turn ``Constant`` nodes into initializers so Q/DQ can reach weights stored that way.

Paddle2ONNX exports (PicoDet, PP-OCR, ...) and several other exporters store every weight as the
output of a ``Constant`` node rather than as a graph initializer.  ONNX Runtime's QDQ quantizer
only quantizes weights that are initializers; it treats a Constant-produced weight as an
activation, so before this pass such models came out with no Q/DQ node at all.  Folding is a
pure relabelling: the tensor, its name and every consumer stay the same, only its storage moves
from a node attribute to ``graph.initializer``.  The caller's ModelProto / file is never
modified (the pass works on a copy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

_DEFAULT_DOMAINS = ("", "ai.onnx")
# IR versions before 4 require every initializer to also be listed as a graph input.
_IR_INITIALIZERS_NEED_INPUTS = 4


@dataclass
class FoldResult:
    """What :func:`fold_constants` did.

    Attributes:
        model: the rewritten copy.
        folded: output names of the Constant nodes turned into initializers (graph order).
        kept: Constant output name -> why it stays a node (string tensors, graph outputs...).
    """

    model: onnx.ModelProto
    folded: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def constant_value(node: onnx.NodeProto) -> tuple[np.ndarray | None, str]:
    """The value of a ``Constant`` node as an array, or (None, why it cannot be folded).

    Handles the attributes ``value`` (any tensor), ``value_float`` / ``value_floats`` (float32
    scalar / 1-D) and ``value_int`` / ``value_ints`` (int64 scalar / 1-D), as the ONNX spec
    defines them.  ``sparse_value`` and string values are left alone: no weighted op consumes
    them.
    """
    if len(node.attribute) != 1:
        return None, f"{len(node.attribute)} attributes (the spec allows exactly one)"
    attr = node.attribute[0]
    if attr.name == "value":
        if attr.t.data_type == onnx.TensorProto.STRING:
            return None, "string tensor"
        return numpy_helper.to_array(attr.t), ""
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32), ""
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32), ""
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64), ""
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64), ""
    return None, f"attribute {attr.name!r} is not folded"


def fold_constants(model: onnx.ModelProto) -> FoldResult:
    """Copy of ``model`` with each top-level ``Constant`` node replaced by an initializer.

    The initializer keeps the node's output name, so consumers are untouched.  Constants that
    are graph outputs, whose name is already an initializer, or whose value is a string or
    sparse tensor stay nodes (listed in :attr:`FoldResult.kept`).  Subgraphs (If/Loop bodies)
    are not rewritten; they still see the folded tensors through the outer scope.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph_outputs = {o.name for o in graph.output}
    initializer_names = {i.name for i in graph.initializer}
    result = FoldResult(model=out)
    keep_nodes: list[onnx.NodeProto] = []
    new_initializers: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS:
            keep_nodes.append(node)
            continue
        name = node.output[0]
        why = ""
        if name in graph_outputs:
            why = "graph output"
        elif name in initializer_names:
            why = "an initializer of the same name exists"
        else:
            value, why = constant_value(node)
        if why:
            result.kept[name] = why
            keep_nodes.append(node)
            continue
        if node.attribute[0].name == "value":
            # Keep the stored tensor as it is (dtype, raw bytes): only the name is set.
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = name
        else:
            tensor = numpy_helper.from_array(value, name)
        new_initializers.append(tensor)
        initializer_names.add(name)
        result.folded.append(name)
    if not result.folded:
        return result
    del graph.node[:]
    graph.node.extend(keep_nodes)
    graph.initializer.extend(new_initializers)
    if out.ir_version < _IR_INITIALIZERS_NEED_INPUTS:
        for tensor in new_initializers:
            graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    return result
