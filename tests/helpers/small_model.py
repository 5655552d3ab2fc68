"""A small float model (Conv -> Relu -> Flatten -> MatMul -> Gemm) with a plain numpy forward pass
and fake-quantization reference, shared by the Q/DQ, evaluation and refinement tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)
W_CONV = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * np.array(
    [1.0, 0.01, 5.0, 0.3], np.float32
)[:, None, None, None]  # very different channel ranges: per-channel scales matter
B_CONV = RNG.standard_normal(4).astype(np.float32)
W_MM = RNG.standard_normal((4 * 6 * 6, 10)).astype(np.float32)
W_GEMM = RNG.standard_normal((5, 10)).astype(np.float32)   # transB=1: [N, K]
C_GEMM = RNG.standard_normal(5).astype(np.float32)


def small_model(opset: int = 13) -> onnx.ModelProto:
    """X[1,3,8,8] -Conv-> c -Relu-> r -Flatten-> f -MatMul-> m -Gemm(transB)-> Y[1,5]."""
    nodes = [
        helper.make_node("Conv", ["X", "W", "B"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("MatMul", ["f", "Wm"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["m", "Wg", "Cg"], ["Y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5])],
        [
            numpy_helper.from_array(W_CONV, "W"),
            numpy_helper.from_array(B_CONV, "B"),
            numpy_helper.from_array(W_MM, "Wm"),
            numpy_helper.from_array(W_GEMM, "Wg"),
            numpy_helper.from_array(C_GEMM, "Cg"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def fq(x: np.ndarray, scale) -> np.ndarray:
    """ONNX QuantizeLinear(int8, zp 0) then DequantizeLinear: round half to even, saturate to
    [-128, 127] (the ONNX/TensorRT Q range; -128 is reached only below -127.5 * scale)."""
    s = np.asarray(scale, np.float32)
    return (np.clip(np.rint(x / s), -128, 127) * s).astype(np.float32)


def per_channel_fq(w: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(w, axis, 0)
    s = (np.abs(moved).reshape(moved.shape[0], -1).max(axis=1) / np.float32(127)).astype(np.float32)
    out = np.stack([fq(moved[i], s[i]) for i in range(moved.shape[0])])
    return np.moveaxis(out, 0, axis)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid 2-D convolution, stride 1, NCHW (plain loops over the kernel)."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    out = np.zeros((n, w.shape[0], h - k + 1, wd - k + 1), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i:i + h - k + 1, j:j + wd - k + 1]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return (out + b[None, :, None, None]).astype(np.float32)


def float_forward(x: np.ndarray) -> dict[str, np.ndarray]:
    c = conv2d(x, W_CONV, B_CONV)
    r = np.maximum(c, 0)
    f = r.reshape(1, -1)
    m = f @ W_MM
    y = m @ W_GEMM.T + C_GEMM
    return {"X": x, "c": c, "r": r, "f": f, "m": m, "Y": y}


def qdq_forward(x: np.ndarray, scales: dict[str, np.float32], skip=()) -> np.ndarray:
    """Reference of the Q/DQ placement we promise: inputs of Conv/MatMul/Gemm (activation with the
    given scale, weights per output channel), outputs and biases untouched."""
    def a(name, v):
        return v if name in skip else fq(v, scales[name])

    c = conv2d(a("X", x), per_channel_fq(W_CONV, 0), B_CONV)
    f = np.maximum(c, 0).reshape(1, -1)
    m = a("f", f) @ per_channel_fq(W_MM, 1)
    wg = per_channel_fq(W_GEMM, 0) if "m" not in skip else W_GEMM
    return a("m", m) @ wg.T + C_GEMM


def maxabs_scales(x: np.ndarray) -> dict[str, np.float32]:
    acts = float_forward(x)
    # 0.6 * max: clips some values so saturation is exercised too.
    return {k: np.float32(np.abs(v).max() * 0.6 / 127) for k, v in acts.items()}


X = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
