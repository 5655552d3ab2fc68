"""OnnxRuntimeCollector.runs: prefetching the next model run changes nothing but the timing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtkld.collect import OnnxRuntimeCollector
from trtkld.errors import ModelError


def _small_model(path) -> str:
    """x[N,4] -> Mul(2) -> y1 -> Relu -> y2 (a batch of the wrong width makes ORT fail)."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y1"]),
        helper.make_node("Relu", ["y1"], ["y2"]),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _batches(n: int):
    from trtkld.data import Batch

    rng = np.random.default_rng(0)
    return [Batch(inputs={"x": rng.normal(size=(2, 4)).astype(np.float32)},
                  sources=(f"s{i}",)) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_prefetched_runs_equal_plain_runs_in_order(tmp_path, n):
    collector = OnnxRuntimeCollector(_small_model(tmp_path / "m.onnx"))
    batches = _batches(n)
    plain = [collector.run(b) for b in batches]
    got = list(collector.runs(batches, prefetch=True))
    assert [b for b, _ in got] == batches
    for (_, activations), expected in zip(got, plain):
        assert list(activations) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(activations[name], expected[name])


def test_prefetched_runs_stop_early_and_raise_in_batch_order(tmp_path):
    from trtkld.data import Batch

    collector = OnnxRuntimeCollector(_small_model(tmp_path / "m.onnx"))
    batches = _batches(4)
    runs = collector.runs(batches, prefetch=True)
    next(runs)
    runs.close()  # stops early: the prefetched run is waited for, nothing hangs
    broken = batches[:2] + [Batch(inputs={"x": np.zeros((2, 3), np.float32)}, sources=("bad",))]
    seen = []
    with pytest.raises(ModelError, match="bad"):
        for batch, _ in collector.runs(broken, prefetch=True):
            seen.append(batch.sources[0])
    assert seen == ["s0", "s1"]
