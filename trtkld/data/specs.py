"""Model input descriptions (:class:`InputSpec`) read from an ONNX graph.

A dimension is an ``int`` when the model fixes it, the ``dim_param`` string (e.g. ``"N"``) when
it is symbolic, or ``None`` when it is unknown; the last two accept any size. By trtkld's
convention axis 0 of every input is the batch axis.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from trtkld.errors import ModelError

if TYPE_CHECKING:  # onnx is imported lazily: importing it costs ~0.3 s
    import onnx

Dim = Union[int, str, None]


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``shape`` holds ints for fixed dims, str/None for dynamic ones."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        # Accept anything np.dtype() accepts (np.float32, "float32") but store a real dtype so
        # comparisons with array.dtype are exact.
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch_dim(self) -> Dim:
        """Axis 0 (the batch axis by convention); ``None`` for a rank-0 input."""
        return self.shape[0] if self.shape else None

    def is_fixed(self, axis: int) -> bool:
        return isinstance(self.shape[axis], int)

    def shape_str(self) -> str:
        """``[N,3,224,224]``-style text for error messages (``?`` for unknown dims)."""
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


def format_shape(shape: tuple) -> str:
    """``(2, 3)`` -> ``[2,3]``: the same notation as :meth:`InputSpec.shape_str`."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dim_of(dim) -> Dim:
    if dim.HasField("dim_value"):
        # Some exporters write -1 (or 0) for "unknown"; only positive sizes are real constraints.
        return int(dim.dim_value) if dim.dim_value > 0 else None
    if dim.HasField("dim_param") and dim.dim_param:
        return str(dim.dim_param)
    return None


def input_specs_from_onnx(model: Union[str, os.PathLike, onnx.ModelProto]) -> list[InputSpec]:
    """The graph inputs of an ONNX model that are not initializers, in graph order.

    ``model`` is a path (external weight files are not read) or a loaded ``onnx.ModelProto``.
    Raises :class:`ModelError` for an unreadable file, a non-tensor input, an input of unknown
    rank, or an element type without a numpy dtype (e.g. bfloat16).
    """
    import onnx
    from onnx import helper

    label = "<ModelProto>"
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        label = os.fspath(model)
        if not os.path.isfile(label):
            raise ModelError(f"ONNX model {label!r}: file not found")
        try:
            proto = onnx.load(label, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError/RuntimeError/... for bad files
            raise ModelError(f"ONNX model {label!r}: cannot be parsed ({exc})") from exc

    initializers = {t.name for t in proto.graph.initializer}
    initializers.update(t.name for t in proto.graph.sparse_initializer)
    specs: list[InputSpec] = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise ModelError(
                f"ONNX model {label!r}: input {value.name!r} is a "
                f"{value.type.WhichOneof('value')}, expected a tensor"
            )
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            raise ModelError(
                f"ONNX model {label!r}: input {value.name!r} has no shape (unknown rank); "
                "give the input a shape (e.g. with onnx.tools.update_model_dims)"
            )
        try:
            dtype: Optional[np.dtype] = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except Exception:  # KeyError / TypeError for types numpy cannot hold
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            type_name = onnx.TensorProto.DataType.Name(ttype.elem_type)
            raise ModelError(
                f"ONNX model {label!r}: input {value.name!r} has element type {type_name}, "
                "expected a bool, integer or IEEE float type"
            )
        specs.append(InputSpec(value.name, tuple(_dim_of(d) for d in ttype.shape.dim), dtype))
    if not specs:
        raise ModelError(f"ONNX model {label!r}: the graph has no (non-initializer) inputs")
    return specs
