"""Write a Q/DQ ONNX model whose activation scales are exactly the calibration cache's scales.

The graph rewriting itself is ONNX Runtime's QDQ quantizer (``QDQQuantizer``), fed with our
per-tensor ranges instead of running one of its calibrators.  This module only decides *what*
gets quantized, prepares the model so the quantizer can express it, and checks the result:

* Placement: Q/DQ on the activation inputs (and per-channel weights) of the op types given,
  by default TensorRT's weighted ops (Conv, ConvTranspose, Gemm, MatMul); outputs of those ops
  are never quantized (``OpTypesToExcludeOutputQuantization``), which is what TensorRT's
  explicit-quantization guidance asks for and what keeps detector heads intact.
* Activations: symmetric INT8, zero point 0, scale = the cache value, bit for bit.
* Weights: per-channel (or per-tensor) symmetric INT8, scale = max|w| / 127 per channel.
* Biases stay float: TensorRT fuses them itself and has no INT32 DequantizeLinear.
* ``Constant``-node weights (Paddle2ONNX exports) are folded into initializers first
  (:mod:`trtkld.qdq.fold`); the caller's model is never modified.
* Coverage is checked: quantizing no weighted op, or under half of them without the caller
  leaving any in float on purpose, raises :class:`~trtkld.errors.QdqCoverageError` listing the
  skipped ops and why, instead of writing a model that is silently FP32.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx

from trtkld._io import atomic_write
from trtkld.errors import ModelError, QdqCoverageError
from trtkld.qdq.fold import fold_constants
from trtkld.qdq.scales import is_usable_scale, range_for_scale

log = logging.getLogger(__name__)

DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MIN_OPSET = 13  # per-channel DequantizeLinear (axis attribute) needs opset 13
# Below this fraction of weighted ops quantized (and none left float on request) the result is
# an error: a model that is mostly FP32 is not what someone asking for INT8 wants.
DEFAULT_MIN_COVERAGE = 0.5
KEPT_FLOAT_REASON = "kept in float on request"

# Which input of each weighted op is the weight (the others that are not initializers are
# activations).  MatMul has no fixed weight slot: whichever input is an initializer is one.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1}
# Inputs the quantizer never touches as activations (biases; Gemm's C).
_IGNORED_INPUTS = {"Conv": {2}, "ConvTranspose": {2}, "Gemm": {2}}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}

ModelSource = Union[str, os.PathLike, onnx.ModelProto]


@dataclass
class QdqSummary:
    """What :func:`write_qdq_model` did.

    Attributes:
        out_path: the written model.
        activations: tensor name -> float32 scale written (== the given scale, bit for bit).
        weights: weight initializer name -> number of scales written (channels, 1 if per-tensor).
        left_float: tensor name -> why it stays float (no scale, unusable scale, no type...).
        excluded_nodes: node name -> why the node was not quantized.
        scale_overrides: tensors whose scale had to be given to ORT directly (see scales.py).
        unused_scales: names in ``scales`` that no quantized node consumes (informational).
        converted_from_opset: the model's original opset when it was converted to 13, else None.
        folded_constants: Constant nodes turned into initializers before quantizing.
        quantized_nodes: weighted ops that got Q/DQ on their inputs.
        weighted_nodes: weighted ops that could take Q/DQ (op type chosen, an activation input).
        kept_float: tensors left float because the caller asked (``keep_float``).
    """

    out_path: Path
    activations: dict[str, np.float32] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    left_float: dict[str, str] = field(default_factory=dict)
    excluded_nodes: dict[str, str] = field(default_factory=dict)
    scale_overrides: list[str] = field(default_factory=list)
    unused_scales: list[str] = field(default_factory=list)
    converted_from_opset: Optional[int] = None
    folded_constants: int = 0
    quantized_nodes: list[str] = field(default_factory=list)
    weighted_nodes: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One-paragraph human summary (used by the CLI)."""
        lines = [
            f"wrote {self.out_path}: {len(self.activations)} activation tensors and "
            f"{len(self.weights)} weights quantized to INT8 "
            f"({len(self.quantized_nodes)} of {len(self.weighted_nodes)} weighted ops)"
        ]
        if self.folded_constants:
            lines.append(f"{self.folded_constants} Constant nodes folded into initializers")
        if self.kept_float:
            lines.append(f"{len(self.kept_float)} tensors kept in float on request")
        if self.converted_from_opset is not None:
            lines.append(f"model converted from opset {self.converted_from_opset} to {MIN_OPSET}")
        unexpected = [t for t, r in self.left_float.items() if r != KEPT_FLOAT_REASON]
        if unexpected:
            lines.append(f"{len(unexpected)} tensors left in float (see warnings)")
        return "; ".join(lines)


def _load(model: ModelSource) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"ONNX model {path}: file not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types for a corrupt file
        raise ModelError(f"ONNX model {path}: cannot be read as ONNX ({exc})") from exc


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default (ai.onnx) domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("ONNX model has no opset import for the default domain")


def prepare_model(model: ModelSource) -> tuple[onnx.ModelProto, Optional[int]]:
    """Load, fold Constant nodes into initializers, convert to opset >= 13, name unnamed nodes,
    and run shape inference.  The source file / ModelProto is not modified.

    Returns:
        (model ready for ORT's quantizer, original opset if it was converted else None)
    """
    proto, converted_from, _ = _prepare(model)
    return proto, converted_from


def _prepare(model: ModelSource) -> tuple[onnx.ModelProto, Optional[int], int]:
    """:func:`prepare_model` plus the number of Constant nodes folded."""
    proto = _load(model)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        raise ModelError(
            "ONNX model already contains QuantizeLinear/DequantizeLinear nodes; expected a float "
            "model (write Q/DQ from the original FP32 model)"
        )
    # Weights stored as Constant nodes are invisible to ORT's quantizer as weights.
    folded = fold_constants(proto)
    proto = folded.model
    if folded.folded:
        log.debug("folded %d Constant nodes into initializers", len(folded.folded))
    converted_from = None
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        # ORT writes per-channel DequantizeLinear with an `axis` attribute, which only exists from
        # opset 13: older models give a file ORT refuses to load.
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:
            raise ModelError(
                f"ONNX model at opset {opset} could not be converted to opset {MIN_OPSET} "
                f"(needed for per-channel Q/DQ): {exc}"
            ) from exc
        converted_from = opset
    # ORT's quantizer excludes nodes by name; unnamed nodes (common in exports) could not be
    # excluded one by one, so give each a unique, deterministic name.  Names do not change
    # what the graph computes.
    taken = {n.name for n in proto.graph.node if n.name}
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_trtkld_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer

    # ORT's own shape-inference pass (also tags the model so the quantizer does not redo it).
    proto = save_and_reload_model_with_shape_infer(proto)
    return proto, converted_from, len(folded.folded)


def _float_value_names(proto: onnx.ModelProto) -> dict[str, bool]:
    """tensor name -> is it float/float16 (only names with type information)."""
    out: dict[str, bool] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type.tensor_type.elem_type in _FLOAT_TYPES
    return out


@dataclass
class _Plan:
    ranges: dict[str, np.float32]      # activation -> amax fed as TensorData
    overrides: dict[str, np.float32]   # activation -> scale given directly
    nodes: list[str]                   # nodes to quantize
    excluded: dict[str, str]
    left_float: dict[str, str]
    candidates: list[str] = field(default_factory=list)   # weighted ops with an activation
    node_activations: dict[str, list[str]] = field(default_factory=dict)
    op_type: dict[str, str] = field(default_factory=dict)  # node name -> op type
    kept_float: list[str] = field(default_factory=list)    # keep_float names actually consumed


def plan_quantization(
    proto: onnx.ModelProto,
    scales: Mapping[str, float],
    op_types: Sequence[str],
    keep_float: Collection[str] = (),
) -> _Plan:
    """Decide which nodes get Q/DQ and with which activation ranges (pure, no ORT call).

    ``keep_float``: activation tensors the caller wants left in float (sensitive layers); every
    weighted op reading one is left unquantized.
    """
    initializers = {i.name: i for i in proto.graph.initializer}
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    is_float = _float_value_names(proto)
    keep = set(keep_float)
    plan = _Plan({}, {}, [], {}, {})

    def activation_problem(name: str) -> Optional[str]:
        if name in keep:
            return KEPT_FLOAT_REASON
        if name not in scales:
            return "no scale in the cache"
        if not is_usable_scale(scales[name]):
            return f"scale {float(scales[name])!r} is not a finite positive normal float32"
        if name not in is_float:
            return "no type information after shape inference"
        if not is_float[name]:
            return "not a float tensor"
        return None

    for node in proto.graph.node:
        if node.op_type not in op_types:
            continue
        weight_slot = _WEIGHT_INPUT.get(node.op_type)
        ignored = _IGNORED_INPUTS.get(node.op_type, set())
        reasons: dict[str, str] = {}
        activations: list[str] = []
        for slot, name in enumerate(node.input):
            if not name or slot in ignored:
                continue
            if name in initializers:
                if initializers[name].data_type not in _FLOAT_TYPES:
                    reasons[name] = "weight is not a float initializer"
                continue
            if slot == weight_slot:
                # e.g. a weight computed by a Reshape/Transpose node: ORT would treat it as an
                # activation with a per-channel axis it cannot honour; leave the node alone.
                made_by = producers.get(name)
                reasons[name] = "weight is not an initializer" + (
                    f" (computed by a {made_by} node)" if made_by else " (a graph input)")
                continue
            problem = activation_problem(name)
            if problem:
                reasons[name] = problem
            else:
                activations.append(name)
        if not activations and not reasons:
            # e.g. MatMul of two initializers: nothing to calibrate, nothing TensorRT needs.
            plan.excluded[node.name] = "no activation input"
            continue
        plan.candidates.append(node.name)
        plan.op_type[node.name] = node.op_type
        plan.node_activations[node.name] = activations
        for name in reasons:
            if reasons[name] == KEPT_FLOAT_REASON and name not in plan.kept_float:
                plan.kept_float.append(name)
        if reasons:
            why = "; ".join(f"{t}: {r}" for t, r in reasons.items())
            plan.excluded[node.name] = why
            for name, reason in reasons.items():
                plan.left_float.setdefault(name, reason)
            continue
        plan.nodes.append(node.name)
        for name in activations:
            amax = range_for_scale(scales[name])
            if amax is None:
                plan.overrides[name] = np.float32(scales[name])
            else:
                plan.ranges[name] = amax
    # A tensor feeding one quantized and one excluded node is still quantized (for the first).
    for name in list(plan.left_float):
        if name in plan.ranges or name in plan.overrides:
            del plan.left_float[name]
    return plan


def check_coverage(
    quantized: Sequence[str],
    candidates: Sequence[str],
    skipped: Mapping[str, str],
    op_type: Mapping[str, str],
    *,
    requested_float: bool,
    op_types: Sequence[str],
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    max_listed: int = 20,
) -> None:
    """Raise :class:`QdqCoverageError` when the Q/DQ model would be (mostly) float.

    Args:
        quantized: weighted ops that got Q/DQ.
        candidates: weighted ops that could (op type chosen and at least one activation input).
        skipped: node name -> why it was not quantized.
        op_type: node name -> op type (for the message).
        requested_float: the caller left tensors in float on purpose; then only "none at all"
            is an error.
        op_types: the op types asked for (for the message).
        min_coverage: smallest accepted fraction ``len(quantized) / len(candidates)``.
    """
    if not candidates:
        raise QdqCoverageError(
            f"the model has no {'/'.join(op_types)} op with an activation input: a Q/DQ model "
            "would quantize nothing (check --op-types)"
        )
    fraction = len(quantized) / len(candidates)
    if quantized and (fraction >= min_coverage or requested_float):
        return
    not_done = [n for n in candidates if n not in set(quantized)]
    listing = "\n".join(f"  {n} ({op_type.get(n, '?')}): {skipped.get(n, 'not quantized')}"
                         for n in not_done[:max_listed])
    if len(not_done) > max_listed:
        listing += f"\n  ... and {len(not_done) - max_listed} more"
    what = ("no weighted op would be quantized" if not quantized else
            f"only {len(quantized)} of {len(candidates)} weighted ops ({fraction:.0%}) would be "
            f"quantized, under the {min_coverage:.0%} minimum, and none was left in float on "
            "request")
    raise QdqCoverageError(
        f"{what}; refusing to write a model that is mostly FP32. "
        f"Skipped {len(not_done)} of {len(candidates)} weighted ops:\n{listing}"
    )


def quantizable_activations(
    model: ModelSource, op_types: Sequence[str] = DEFAULT_OP_TYPES
) -> list[str]:
    """Activation tensors that would get Q/DQ with ``op_types`` if each had a scale (graph order).

    Lets callers calibrate only what the Q/DQ model will use.
    """
    proto, _ = prepare_model(model)
    return _quantizable(proto, op_types)


def _quantizable(proto: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    names: list[str] = []
    initializers = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in op_types:
            continue
        ignored = _IGNORED_INPUTS.get(node.op_type, set())
        for slot, name in enumerate(node.input):
            if (name and slot not in ignored and slot != _WEIGHT_INPUT.get(node.op_type)
                    and name not in initializers and name not in names):
                names.append(name)
    return names


def _run_ort_quantizer(
    proto: onnx.ModelProto, plan: _Plan, op_types: Sequence[str], per_channel: bool
) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    data = {
        n: TensorData(lowest=np.float32(-a), highest=np.float32(a))
        for n, a in plan.ranges.items()
    }
    # Scales with no exact float32 range: give ORT the scale itself (its supported per-tensor
    # override).  It still requires a range entry, which the override then supersedes.
    overrides = {}
    for name, s in plan.overrides.items():
        a = np.float32(np.float64(s) * 127)
        data[name] = TensorData(lowest=np.float32(-a), highest=a)
        overrides[name] = [{"scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8)}]
    all_nodes = [n.name for n in proto.graph.node]
    chosen = set(plan.nodes)
    extra_options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(op_types),
        "QuantizeBias": False,
        # ORT otherwise enlarges weight scales so an INT32 bias scale stays representable, even
        # with QuantizeBias off; our biases stay float, and weight scales must be max|w| / 127.
        "QDQDisableWeightAdjustForInt32Bias": True,
        "TensorQuantOverrides": overrides,
    }
    try:
        quantizer = QDQQuantizer(
            proto,
            per_channel,
            False,  # reduce_range: TensorRT uses the full symmetric range
            QuantType.QInt8,
            QuantType.QInt8,
            TensorsData(CalibrationMethod.MinMax, data),
            list(plan.nodes),
            [n for n in all_nodes if n not in chosen],
            list(op_types),  # must be a list, not None (None means "every op ORT knows")
            extra_options,
        )
        quantizer.quantize_model()
        # ORT appends Q/DQ nodes at the end of the node list and only sorts when it saves the
        # file itself (save_model_to_file); we save ourselves, so sort the same way first.
        quantizer.model.topological_sort()
    except Exception as exc:  # ORT raises bare ValueError/AssertionError with its own wording
        raise ModelError(f"ONNX Runtime's QDQ quantizer failed on the model: {exc}") from exc
    return quantizer.model.model


def _read_back(
    out: onnx.ModelProto,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Scales and zero points as written: (activations, weights).

    activations: tensor -> (scale, zero point) of the QuantizeLinear node reading it.
    weights: INT8 weight initializer -> (scale, zero point) of its DequantizeLinear node
    (ORT stores weights pre-quantized, so they have no QuantizeLinear).
    """
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    activations, weights = {}, {}
    for node in out.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits[node.input[1]]
        zp = inits[node.input[2]] if len(node.input) > 2 else np.zeros((), np.int8)
        if node.op_type == "QuantizeLinear":
            activations[node.input[0]] = (scale, zp)
        elif node.input[0] in inits:
            weights[node.input[0]] = (scale, zp)
    return activations, weights


def write_qdq_model(
    model: ModelSource,
    scales: Mapping[str, float],
    out_path: Union[str, os.PathLike],
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    warn_left_float: bool = True,
    keep_float: Collection[str] = (),
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> QdqSummary:
    """Write ``model`` with Q/DQ nodes whose activation scales are ``scales``.

    Args:
        model: FP32 ONNX model (path or ModelProto); opset < 13 is converted to 13.
        scales: tensor name -> activation scale (activation units per INT8 step, i.e. the TensorRT
            cache value amax / 127).  Names are ONNX tensor names.
        out_path: where to write the Q/DQ model (written atomically).
        op_types: op types whose inputs get Q/DQ (outputs never do).
        per_channel: per-output-channel weight scales (TensorRT's recommendation) or one per weight.
        warn_left_float: log the tensors left in float (callers writing many variants of one
            model log them once themselves).
        keep_float: activation tensors to leave in float on purpose (sensitive layers); the
            weighted ops reading them run in FP16/FP32 in TensorRT.
        min_coverage: smallest fraction of weighted ops that must be quantized when
            ``keep_float`` is empty (see :func:`check_coverage`).
    Returns:
        a :class:`QdqSummary`; tensors without a usable scale stay float (logged as a warning).
    Raises:
        QdqCoverageError: no weighted op quantized, or under ``min_coverage`` of them with
            nothing kept float on request; nothing is written.
        ModelError: unreadable model, model already quantized, ORT's quantizer failed, or the
            written scales differ from the given ones (a bug, never silently accepted).
    """
    out_path = Path(out_path)
    proto, converted_from, folded = _prepare(model)
    plan = plan_quantization(proto, scales, tuple(op_types), keep_float)
    coverage = dict(op_types=tuple(op_types), min_coverage=min_coverage,
                    requested_float=bool(plan.kept_float))
    check_coverage(plan.nodes, plan.candidates, plan.excluded, plan.op_type, **coverage)
    out = _run_ort_quantizer(proto, plan, tuple(op_types), per_channel)

    written, weights = _read_back(out)
    summary = QdqSummary(out_path=out_path, converted_from_opset=converted_from,
                         folded_constants=folded, kept_float=list(plan.kept_float),
                         weighted_nodes=list(plan.candidates))
    summary.excluded_nodes = dict(plan.excluded)
    summary.left_float = dict(plan.left_float)
    summary.scale_overrides = sorted(plan.overrides)
    for name in list(plan.ranges) + list(plan.overrides):
        if name not in written:
            # ORT skips tensors it considers unquantizable without saying so; report them.
            summary.left_float[name] = "ONNX Runtime's quantizer did not quantize it"
            continue
        want = np.float32(scales[name])
        got, zp = (np.asarray(v) for v in written[name])
        if got.dtype != np.float32 or got.shape != () or got.tobytes() != want.tobytes():
            raise ModelError(
                f"tensor {name}: Q/DQ scale written by ONNX Runtime is {got!r}, expected exactly "
                f"float32 {want!r} (the cache scale)"
            )
        if zp.dtype != np.int8 or np.any(zp != 0):
            raise ModelError(f"tensor {name}: zero point {zp!r}, expected int8 0")
        summary.activations[name] = want
    for name, (scale, zp) in weights.items():
        if np.asarray(zp).dtype != np.int8 or np.any(np.asarray(zp) != 0):
            raise ModelError(f"weight {name}: zero point {zp!r}, expected int8 0 (symmetric)")
        summary.weights[name] = int(np.asarray(scale).size)
    used = set(summary.activations)
    summary.unused_scales = [n for n in scales if n not in used]
    summary.quantized_nodes = [n for n in plan.nodes
                               if all(a in summary.activations for a in plan.node_activations[n])]
    skipped = dict(plan.excluded)
    for n in plan.nodes:
        if n not in summary.quantized_nodes:
            skipped[n] = "ONNX Runtime's quantizer did not quantize its inputs"
    check_coverage(summary.quantized_nodes, plan.candidates, skipped, plan.op_type, **coverage)

    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"Q/DQ model for {out_path} fails onnx.checker: {exc}") from exc

    _save_atomic(out, out_path)
    # Tensors kept in float on request are what the caller asked for: not worth a warning.
    unexpected = {t: r for t, r in summary.left_float.items() if r != KEPT_FLOAT_REASON}
    if unexpected and warn_left_float:
        listing = "\n".join(f"  {t}: {r}" for t, r in unexpected.items())
        log.warning(
            "%d tensor(s) left in float (their consumers run in FP32/FP16 in TensorRT):\n%s",
            len(unexpected),
            listing,
        )
    return summary


def _save_atomic(model: onnx.ModelProto, path: Path) -> None:
    """Write through the shared atomic writer (unique exclusive temp file, fsync, replace)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, model.SerializeToString(deterministic=True))
    except OSError as exc:
        raise ModelError(f"cannot write the Q/DQ model {path}: {exc.strerror or exc}") from exc
