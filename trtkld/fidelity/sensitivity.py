"""Sensitive layers: which quantized tensors hurt the model output most, and what keeping the
worst ones in higher precision buys.

For every activation tensor that feeds a weighted op (the inputs ``trtkld qdq`` puts Q/DQ on),
the *single-tensor fidelity* is the model's output fidelity against FP32 when only that tensor
and the weights of the ops reading it are quantized (everything else float).  Tensors are ranked
worst first.  The *keep-float steps* then start from the fully quantized model and keep the
ranked tensors in float one by one, cumulatively, measuring the fidelity after each step -- what
Polygraphy's ``debug precision`` bisection is used for by hand.

All measurements run one ONNX Runtime session: the Q/DQ model that
:func:`trtkld.qdq.write_qdq_model` writes, with a ``Where(gate, dequantized, float)`` selector
in front of every quantized input (activation and weight), the gates being boolean model inputs.
``Where`` selects without arithmetic, so a configuration's outputs are those of the Q/DQ model
written with ``keep_float`` = the gated-off tensors: bit for bit when every gate is on, and up
to float rounding otherwise (ONNX Runtime fuses a float Conv with constant weights, which a
gated Conv is not; measured below 0.01 dB of SQNR, tested).
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnx
from onnx import helper

from trtkld.errors import ModelError
from trtkld.fidelity.measure import METRICS, metric_value, output_records
from trtkld.fidelity.metrics import OutputAccumulator
from trtkld.fidelity.session import ort_session
from trtkld.qdq import DEFAULT_OP_TYPES, prepare_model, write_qdq_model

PathLike = Union[str, "os.PathLike[str]"]
Samples = Sequence[Mapping[str, np.ndarray]]
GATE_PREFIX = "trtkld_gate:"

# A custom metric: per-output accumulators -> score, higher is better.
MetricFn = Callable[[Mapping[str, OutputAccumulator]], float]


def resolve_metric(metric: Union[str, MetricFn]) -> tuple[str, MetricFn, str]:
    """(name, function, unit) for a metric of :data:`trtkld.fidelity.METRICS` (``sqnr``: worst
    output SQNR in dB; ``cosine``: worst output cosine; ``top1``: first classifier output's
    top-1 agreement) or a callable of ``{output: OutputAccumulator}``."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric, ""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")

    def score(accs: Mapping[str, OutputAccumulator]) -> float:
        value = metric_value(output_records(accs), metric)
        if math.isnan(value) and metric == "top1":
            raise ModelError("metric top1: the model has no classifier-shaped output "
                             "([N, C], C > 1); use sqnr or cosine")
        return value

    return metric, score, "dB" if metric == "sqnr" else ""


@dataclass
class TensorSensitivity:
    """One quantizable activation: its consumers and the fidelity with only it quantized."""

    tensor: str
    consumers: list[str]
    fidelity: float


@dataclass
class KeepFloatStep:
    """Fidelity with ``kept`` (cumulative) in float and every other tensor quantized."""

    kept: list[str]
    fidelity: float
    gain: float        # fidelity minus the previous step's (the first step: vs all quantized)


@dataclass
class SensitivityReport:
    """What :func:`sensitivity_analysis` measured (``per_tensor`` worst first)."""

    metric: str
    unit: str
    samples: int
    all_quantized: float
    per_tensor: list[TensorSensitivity]
    steps: list[KeepFloatStep] = field(default_factory=list)

    def top(self, k: int) -> list[str]:
        """The ``k`` most sensitive tensors (the ones to keep in float), worst first."""
        return [s.tensor for s in self.per_tensor[:max(0, k)]]

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> Optional[float]:
            return float(v) if math.isfinite(v) else None

        return {
            "metric": self.metric,
            "samples": self.samples,
            "all_quantized": num(self.all_quantized),
            "per_tensor": [{"tensor": s.tensor, "consumers": s.consumers,
                            "fidelity_only_this_quantized": num(s.fidelity)}
                           for s in self.per_tensor],
            "keep_float_steps": [{"kept": st.kept, "fidelity": num(st.fidelity),
                                  "gain": num(st.gain)} for st in self.steps],
        }

    def format(self, top: int = 10) -> str:
        """Plain-text tables: the most sensitive tensors and the cumulative keep-float steps."""
        unit = f" {self.unit}" if self.unit else ""
        lines = [
            f"sensitivity ({self.metric}{', ' + self.unit if self.unit else ''}; "
            f"{self.samples} samples): all {len(self.per_tensor)} tensors quantized = "
            f"{self.all_quantized:.4g}{unit}",
            "  most sensitive tensors (fidelity with only that tensor and its consumers' "
            "weights quantized):",
        ]
        width = max([len(s.tensor) for s in self.per_tensor[:top]] + [6])
        for rank, s in enumerate(self.per_tensor[:top], 1):
            lines.append(f"  {rank:>3}. {s.tensor:<{width}}  {s.fidelity:10.4g}{unit}  "
                         f"-> {', '.join(s.consumers)}")
        if self.steps:
            lines.append("  keep in float, cumulatively (fidelity of the rest quantized, gain):")
            for k, st in enumerate(self.steps, 1):
                lines.append(f"  +{k:<3} {st.kept[-1]:<{width}}  {st.fidelity:10.4g}{unit}  "
                             f"{st.gain:+.4g}{unit}")
        return "\n".join(lines)


class GatedQdqSession:
    """The Q/DQ model of ``scales`` with a boolean gate per quantized activation tensor.

    ``run(feeds, on)`` runs the model with the tensors in ``on`` (and the weights of the ops
    reading them) quantized and every other one in float.  ``tensors`` lists the gated tensors
    (those the Q/DQ model quantizes) and ``consumers`` the ops reading each.
    """

    def __init__(self, model: Union[PathLike, onnx.ModelProto], scales: Mapping[str, float], *,
                 op_types: Sequence[str] = DEFAULT_OP_TYPES, per_channel: bool = True):
        with tempfile.TemporaryDirectory(prefix="trtkld-sensitivity-") as tmp:
            path = Path(tmp) / "sensitivity.int8.onnx"
            summary = write_qdq_model(model, scales, path, op_types=op_types,
                                      per_channel=per_channel, warn_left_float=False)
            qdq = onnx.load(str(path))
        prepared, _ = prepare_model(model)
        self.tensors: list[str] = list(summary.activations)
        self.consumers: dict[str, list[str]] = {t: [] for t in self.tensors}
        self._gates = _add_gates(qdq, prepared, self.tensors, self.consumers)
        self._session = ort_session(qdq.SerializeToString(), quantized=True)
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], on: Sequence[str]) -> list[np.ndarray]:
        """Outputs (``output_names`` order) with only the tensors in ``on`` quantized."""
        unknown = set(on) - set(self.tensors)
        if unknown:
            raise ModelError(f"tensors {sorted(unknown)} are not quantized by this Q/DQ model")
        full = dict(feeds)
        chosen = set(on)
        for tensor, gate in self._gates.items():
            full[gate] = np.array(tensor in chosen)
        return self._session.run(self.output_names, full)


def _add_gates(qdq: onnx.ModelProto, prepared: onnx.ModelProto, tensors: Sequence[str],
               consumers: dict[str, list[str]]) -> dict[str, str]:
    """Insert ``Where(gate, dq, float)`` before each quantized input; returns tensor -> gate.

    ``qdq`` is edited in place. Weights get the gate of the op's (first) quantized activation,
    and their float value from ``prepared`` (the float model ORT's quantizer started from).
    """
    graph = qdq.graph
    produced_by = {o: n for n in graph.node for o in n.output}
    prepared_nodes = {n.name: n for n in prepared.graph.node}
    prepared_inits = {i.name: i for i in prepared.graph.initializer}
    existing_inits = {i.name for i in graph.initializer}
    gates = {t: f"{GATE_PREFIX}{t}" for t in tensors}
    for gate in gates.values():
        graph.input.append(helper.make_tensor_value_info(gate, onnx.TensorProto.BOOL, []))
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for index, node in enumerate(graph.node):
        if node.name not in prepared_nodes or node.op_type in ("QuantizeLinear",
                                                               "DequantizeLinear"):
            continue
        original = prepared_nodes[node.name]
        gated: list[tuple[int, str]] = []   # (slot, activation tensor) of quantized activations
        weights: list[int] = []
        for slot, name in enumerate(node.input):
            dq = produced_by.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = original.input[slot] if slot < len(original.input) else ""
            if source in gates:
                gated.append((slot, source))
            else:
                weights.append(slot)
        if not gated:
            continue
        first_gate = gates[gated[0][1]]
        for _, tensor in gated:
            if node.name not in consumers[tensor]:
                consumers[tensor].append(node.name)
        selectors = []
        for slot, tensor in gated:
            out = f"{node.input[slot]}/gated/{node.name}/{slot}"
            selectors.append(helper.make_node("Where", [gates[tensor], node.input[slot], tensor],
                                              [out], name=f"trtkld_gate_{node.name}_{slot}"))
            node.input[slot] = out
        for slot in weights:
            source = original.input[slot]
            if source not in prepared_inits:
                raise ModelError(f"node {node.name}: weight {source!r} not found in the float "
                                 "model")
            if source not in existing_inits:
                graph.initializer.append(prepared_inits[source])
                existing_inits.add(source)
            out = f"{node.input[slot]}/gated/{node.name}/{slot}"
            selectors.append(helper.make_node("Where", [first_gate, node.input[slot], source],
                                              [out], name=f"trtkld_gate_{node.name}_{slot}"))
            node.input[slot] = out
        new_nodes[index] = selectors
    ordered = []
    for index, node in enumerate(graph.node):
        ordered.extend(new_nodes.get(index, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return gates


def _measure(session: GatedQdqSession, samples: Samples, references: list[list[np.ndarray]],
             on: Sequence[str], metric: MetricFn) -> float:
    accs = {o: OutputAccumulator(o) for o in session.output_names}
    for feeds, ref in zip(samples, references):
        got = session.run(feeds, on)
        for name, r, g in zip(session.output_names, ref, got):
            accs[name].update(r, g)
    return float(metric(accs))


def sensitivity_analysis(
    model: Union[PathLike, onnx.ModelProto],
    scales: Mapping[str, float],
    samples: Samples,
    *,
    keep_float: int = 5,
    metric: Union[str, MetricFn] = "sqnr",
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    progress: Optional[Callable[[Any], Any]] = None,
) -> SensitivityReport:
    """Rank the quantized tensors by output damage and measure keeping the worst in float.

    Args:
        model: FP32 ONNX model.
        scales: tensor -> activation scale (a calibration result, e.g. ``cache.scales``).
        samples: inputs to measure on, one ``{input name: array}`` dict per model run (e.g.
            :func:`trtkld.fidelity.materialize` of a data source).
        keep_float: how many of the most sensitive tensors the cumulative steps keep in float.
        metric: ``"sqnr"`` (worst output SQNR, dB), ``"cosine"``, ``"top1"`` or a callable of
            ``{output: OutputAccumulator}`` returning a score where higher is better.
        op_types, per_channel: Q/DQ placement, as for :func:`trtkld.qdq.write_qdq_model`.
        progress: optional wrapper for the per-tensor loop (e.g. ``tqdm``).
    Returns:
        a :class:`SensitivityReport`; costs (number of tensors + keep_float + 1) passes over
        ``samples`` in one ONNX Runtime session.
    """
    name, fn, unit = resolve_metric(metric)
    if not samples:
        raise ModelError("sensitivity analysis needs at least one input sample")
    session = GatedQdqSession(model, scales, op_types=op_types, per_channel=per_channel)
    # The FP32 reference as trtkld eval computes it, so "all quantized" matches its figure.
    fp32 = ort_session(model if not isinstance(model, onnx.ModelProto)
                       else model.SerializeToString(), quantized=False)
    references = [fp32.run(session.output_names, dict(feeds)) for feeds in samples]
    del fp32
    everything = list(session.tensors)
    all_quantized = _measure(session, samples, references, everything, fn)
    loop = progress(everything) if progress else everything
    per_tensor = [TensorSensitivity(t, list(session.consumers[t]),
                                    _measure(session, samples, references, [t], fn))
                  for t in loop]
    # Worst first; ties keep graph order (sorted is stable), so the ranking is deterministic.
    per_tensor.sort(key=lambda s: (s.fidelity if not math.isnan(s.fidelity) else -math.inf))
    report = SensitivityReport(name, unit, len(samples), all_quantized, per_tensor)
    previous = all_quantized
    kept: list[str] = []
    for s in per_tensor[:max(0, keep_float)]:
        kept.append(s.tensor)
        on = [t for t in everything if t not in kept]
        fidelity = _measure(session, samples, references, on, fn)
        report.steps.append(KeepFloatStep(list(kept), fidelity, fidelity - previous))
        previous = fidelity
    return report
