"""Output-aware local objective: a threshold's error measured at the output of the Conv / Gemm
/ MatMul that reads the tensor, with that op's real (FP32) weights.

For an activation ``x`` read by weighted op ``y = f(x; W)``, a candidate scale ``s`` costs
``sum (f(x; W) - f(fq(x, s); W))^2`` summed over every weighted op reading ``x``
(``fq``: QuantizeLinear + DequantizeLinear, symmetric INT8). Unlike an |x|-histogram score it
weighs each channel by what the weights do with it. Each op runs alone in ONNX Runtime as a
one-node model; all candidate scales of a tensor go through it in one batched run.

Cost: one consumer run per candidate, i.e. about one model pass per candidate per sample. For
4-D (NCHW) activations only a centred ``CROP x CROP`` spatial window is used: both the FP32
and the quantized input go through the same zero-padded window, so their difference is the
quantization error of those outputs (the border outputs see the same zero padding in both).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from trtkld.fidelity import fake_quantize, ort_session

CROP = 32  # spatial window (pixels) of 4-D activations the local objective is measured on


def centre_crop(x: np.ndarray, size: int = CROP) -> np.ndarray:
    """The centred ``size x size`` window of the last two axes of a 4-D array (else ``x``)."""
    if x.ndim != 4:
        return x
    h, w = x.shape[2], x.shape[3]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(x[:, :, top:top + size, left:left + size])


class ConsumerProbe:
    """The weighted ops reading each activation, as one-node ONNX Runtime sessions.

    Args:
        prepared: the model as :func:`trtkld.qdq.prepare_model` returns it.
        tensors: activations to probe.
        op_types: the weighted op types (the Q/DQ placement).
    A tensor is probed only if every other input of its consumers is an initializer (a weight
    or bias) and it has at least two dimensions (the candidates are stacked on axis 0);
    ``probed`` lists those.
    """

    def __init__(self, prepared: onnx.ModelProto, tensors: Sequence[str],
                 op_types: Sequence[str]):
        inits = {i.name: i for i in prepared.graph.initializer}
        opset = [o for o in prepared.opset_import]
        consumers: dict[str, list[onnx.NodeProto]] = {t: [] for t in tensors}
        for node in prepared.graph.node:
            if node.op_type not in op_types:
                continue
            for name in node.input:
                if name in consumers and node not in consumers[name]:
                    consumers[name].append(node)
        self._sessions: dict[str, list] = {}
        # Only Conv inputs are cropped: a Gemm/MatMul's last axes are not spatial.
        self._spatial: dict[str, bool] = {
            t: all(n.op_type in ("Conv", "ConvTranspose") for n in nodes)
            for t, nodes in consumers.items()}
        for t, nodes in consumers.items():
            if not nodes:
                continue
            sessions = []
            for node in nodes:
                others = [n for n in node.input if n and n != t]
                if any(n not in inits for n in others):
                    sessions = []
                    break
                if node.op_type == "Gemm" and any(a.name == "transA" and a.i
                                                  for a in node.attribute):
                    sessions = []
                    break
                sessions.append(self._one_node(node, t, [inits[n] for n in others], opset))
            if sessions:
                self._sessions[t] = sessions
        self.probed: list[str] = [t for t in tensors if t in self._sessions]

    @staticmethod
    def _one_node(node: onnx.NodeProto, tensor: str, initializers, opset):
        out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
        x = helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.output[:]
        copy.output.append("y")
        graph = helper.make_graph([copy], "probe", [x], [out], initializer=list(initializers))
        model = helper.make_model(graph, opset_imports=opset)
        model.ir_version = 8
        return ort_session(model.SerializeToString(), quantized=False, threads=1)

    def errors(self, tensor: str, samples: Sequence[np.ndarray],
               scales: Sequence[float]) -> np.ndarray:
        """Squared error at the consumers' outputs for each scale, summed over ``samples``
        (arrays of ``tensor``, batch axis first, one or more samples each): float64 ``(S,)``."""
        total = np.zeros(len(scales))
        for x in samples:
            x = np.asarray(x, dtype=np.float32)
            if self._spatial[tensor]:
                x = centre_crop(x)
            if x.ndim < 2 or not np.all(np.isfinite(x)):
                continue
            stacked = np.concatenate([x] + [fake_quantize(x, s) for s in scales], axis=0)
            n = x.shape[0]
            for session in self._sessions[tensor]:
                y = session.run(None, {tensor: stacked})[0]
                ref = y[:n].astype(np.float64).ravel()
                for k in range(len(scales)):
                    d = y[(k + 1) * n:(k + 2) * n].astype(np.float64).ravel() - ref
                    total[k] += float(np.einsum("i,i->", d, d))   # not BLAS dot: see fidelity

        return total


def choose_per_tensor(probe: ConsumerProbe, samples: Mapping[str, Sequence[np.ndarray]],
                      candidates: Mapping[str, Mapping[str, float]],
                      fallback: str) -> dict[str, str]:
    """For each tensor, the candidate label whose scale has the smallest consumer-output error.

    Args:
        samples: tensor -> captured activations (training data only).
        candidates: label -> (tensor -> scale), in tie-break order (the first label wins ties).
        fallback: label used for tensors that cannot be probed or have no samples.
    Returns:
        tensor -> label for every tensor of ``candidates[fallback]``.
    """
    labels = list(candidates)
    out: dict[str, str] = {}
    for t in candidates[fallback]:
        chosen: Optional[str] = None
        if t in probe.probed and samples.get(t):
            # Distinct scales only: equal scales have equal errors (first label keeps them).
            distinct: list[float] = []
            owner: list[str] = []
            for label in labels:
                s = float(np.float32(candidates[label][t]))
                if s not in distinct:
                    distinct.append(s)
                    owner.append(label)
            if len(distinct) > 1:
                err = probe.errors(t, samples[t], distinct)
                chosen = owner[int(np.argmin(err))]
        out[t] = chosen or fallback
    return out
