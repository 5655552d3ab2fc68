"""Real TensorRT + pycuda tests (marker ``gpu``): run inside NVIDIA's TensorRT container.

They skip with the reason printed (``-ra``) where ``tensorrt``, pycuda or a CUDA driver is
missing, or where TensorRT is 11+ (no calibrators). Oracles: ONNX Runtime FP32 on the same
batches (top-1 agreement), trtkld.histogram on host copies of the very same device values
(exact equality), TensorRT itself (did it call get_batch when our cache was valid?), trtexec.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from trtkld.errors import TensorRTUnavailableError


def _unavailable() -> str | None:
    from trtkld.trt import _backend

    try:
        _backend.require_calibrator_api()
        _backend.import_pycuda()
    except TensorRTUnavailableError as exc:
        return str(exc)
    return None


REASON = _unavailable()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT 8.6-10.x + CUDA: {REASON}"),
]

METHODS = ("ppq", "nvidia", "modelopt")


@pytest.fixture(scope="module")
def backend():
    from trtkld.trt._backend import PycudaBackend

    b = PycudaBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def demo():
    from trtkld import demo as demo_mod
    from trtkld.data import input_specs_from_onnx, open_data

    model = str(demo_mod.demo_model_path())
    data = open_data(
        str(demo_mod.DEMO_CALIB_DIR),
        input_specs_from_onnx(model),
        batch_size=4,
        preprocess=demo_mod.preprocess_options(demo_mod.DEMO_PREPROCESS),
    )
    return model, data


def _trt_version() -> str:
    from trtkld.trt import _backend

    return _backend.tensorrt_version()


# ------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("num_bins", [2048, 4096, 16384])  # 16384: the global-memory kernel
def test_gpu_histograms_equal_cpu_histograms(backend, num_bins):
    from trtkld.histogram import abs_histogram, tensor_stats
    from trtkld.trt import kernels
    from trtkld.trt.gpu_collect import decode_stats

    rng = np.random.default_rng(num_bins)
    x = (rng.standard_cauchy(3_000_001) * 0.5).astype(np.float32)  # heavy tails, odd length
    x[::9973] = 0.0
    x[5] = np.float32(-0.0)
    x[7], x[11], x[13] = np.nan, np.inf, -np.inf
    finite = x[np.isfinite(x)]
    hist_max = float(np.abs(finite).max())
    inv = float(np.float64(num_bins) / np.float64(hist_max))
    src = backend.allocate(x.nbytes)
    bins = backend.allocate(num_bins * 8)
    st = backend.allocate(kernels.STATS_LEN * 8)
    try:
        backend.copy_htod(src, x)
        backend.memset_zero(bins, num_bins * 8)
        backend.memset_zero(st, kernels.STATS_LEN * 8)
        half = x.size // 2
        base = backend.device_ptr(src)
        for ptr, n in ((base, half), (base + 4 * half, x.size - half)):
            backend.histogram(ptr, n, inv, num_bins, bins)
            backend.stats(ptr, n, st)
        counts = np.zeros(num_bins, dtype=np.uint64)
        raw = np.zeros(kernels.STATS_LEN, dtype=np.uint64)
        backend.copy_dtoh(counts, bins)
        backend.copy_dtoh(raw, st)
    finally:
        for h in (src, bins, st):
            backend.free(h)
    np.testing.assert_array_equal(counts.astype(np.int64), abs_histogram(x, num_bins, hist_max))
    assert decode_stats(raw) == tensor_stats(x)


def test_tensorrt_collector_equals_cpu_histograms_of_the_same_values(backend, demo):
    from trtkld.histogram import TensorHistogram
    from trtkld.trt.gpu_collect import collect_histograms_tensorrt

    model, data = demo
    seen: dict[str, list[np.ndarray]] = {}
    hists = collect_histograms_tensorrt(
        model, data, num_bins=2048, backend=backend, quiet=True,
        on_tensor=lambda name, arr: seen.setdefault(name, []).append(arr),
    )
    assert "x" in hists and len(hists) > 50
    for name, hist in hists.items():
        cpu = TensorHistogram(name, 2048, hist.hist_max)
        for arr in seen[name]:
            cpu.update(arr)
        assert cpu == hist, name  # counts and statistics, exactly
        finite_absmax = [float(np.abs(a[np.isfinite(a)]).max(initial=0)) for a in seen[name]]
        assert hist.absmax == max(finite_absmax)


# ------------------------------------------------------------------------------ INT8 builds


def _build(model, data, cache, method, backend, **kw):
    from trtkld.trt import engine
    from trtkld.trt.calibrator import KLDCalibrator

    calib = KLDCalibrator(
        data, method, cache, model, device_backend=backend, quiet=True, **kw
    )
    with calib:
        plan, names = engine.build_int8_engine(
            model, calib, calibration_shapes=calib.calibration_shapes()
        )
        calib.check()
    return plan, names, calib


def _top1_agreement(model, data, plan, backend) -> float:
    import onnxruntime as ort

    from trtkld.trt.engine import EngineSession

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    engine = EngineSession(plan, backend)
    try:
        agree = total = 0
        for batch in data:
            ref = sess.run(None, dict(batch.inputs))[0]
            got = engine.run(batch.inputs)[engine.output_names[0]]
            agree += int((ref.argmax(axis=1) == got.argmax(axis=1)).sum())
            total += ref.shape[0]
    finally:
        engine.close()
    return agree / total


@pytest.mark.parametrize("method", METHODS)
def test_int8_engine_with_our_cache(backend, demo, tmp_path, method, capsys):
    from trtkld.cache import parse_cache

    model, data = demo
    cache = tmp_path / f"demo.{method}.cache"
    plan, names, calib = _build(model, data, cache, method, backend)
    assert plan is not None
    assert calib.cache_status == "generated"
    assert calib.served_our_cache and calib.get_batch_calls == 0  # TensorRT took our scales
    parsed = parse_cache(cache)
    assert parsed.version_number == calib.request.version_number
    assert parsed.algorithm == "EntropyCalibration2"
    missing = [n for n in names if n not in parsed.scales]
    with capsys.disabled():
        print(f"\n[{method}] {len(parsed.scales)} scales, {len(missing)} network tensors without")

    plan2, _, calib2 = _build(model, data, cache, method, backend)  # second build: reuse
    assert plan2 is not None and calib2.cache_status == "reused" and calib2.get_batch_calls == 0

    agreement = _top1_agreement(model, data, plan, backend)
    with capsys.disabled():
        print(f"[{method}] INT8 vs ONNX Runtime FP32 top-1 agreement: {agreement:.3f}")
    assert agreement >= 0.9


def test_builtin_tensorrt_calibration_writes_a_separate_cache(backend, demo, tmp_path):
    from trtkld.cache import parse_cache

    model, data = demo
    cache = tmp_path / "demo.cache"
    plan, names, calib = _build(model, data, cache, "tensorrt", backend)
    assert plan is not None
    assert calib.batches_served == len(data) and calib.end_of_data
    assert not cache.exists()
    theirs = parse_cache(tmp_path / "demo.tensorrt.cache")
    assert theirs.algorithm == "EntropyCalibration2" and "x" in theirs.scales


def test_minmax_base_class(backend, demo, tmp_path):
    from trtkld.cache import parse_cache
    from trtkld.trt import _backend

    trt = _backend.import_tensorrt()
    model, data = demo
    cache = tmp_path / "mm.cache"
    plan, _, calib = _build(
        model, data, cache, "ppq", backend, base_class=trt.IInt8MinMaxCalibrator
    )
    assert plan is not None and calib.get_batch_calls == 0
    assert parse_cache(cache).algorithm == "MinMaxCalibration"


def test_dynamic_shapes_and_two_inputs(backend, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from trtkld.data import input_specs_from_onnx, open_data

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    nodes = [
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Tanh", ["b"], ["tb"]),
        helper.make_node("Add", ["ra", "tb"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "two", [a, b], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = str(tmp_path / "two.onnx")
    onnx.save(proto, model)
    folder = tmp_path / "npz"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        np.savez(folder / f"s{i}.npz", a=rng.standard_normal(8).astype(np.float32),
                 b=rng.standard_normal(8).astype(np.float32))
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=4)  # 4, 4, 2 (padded)
    for method in ("tensorrt", "ppq"):
        plan, _, calib = _build(model, data, tmp_path / f"{method}.cache", method, backend)
        assert plan is not None, method
        if method == "tensorrt":
            assert calib.batches_served == 3
        else:
            assert calib.get_batch_calls == 0


def test_build_cli(demo, tmp_path, capsys):
    from trtkld.cli.main import main

    cache, engine = tmp_path / "demo.cache", tmp_path / "demo.plan"
    rc = main(["build", "--demo", "--cache", str(cache), "--engine", str(engine), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and engine.stat().st_size > 0
    assert "calibration cache:" in out and "generated" in out
    assert "float network tensors" in out


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="trtexec is not on PATH")
def test_trtexec_accepts_our_cache(demo, tmp_path, backend):
    from trtkld.trt.calibrator import KLDCalibrator

    model, data = demo
    cache = tmp_path / "demo.cache"
    with KLDCalibrator(data, "ppq", cache, model, device_backend=backend, quiet=True) as calib:
        calib.prepare()
    before = cache.read_bytes()
    out = subprocess.run(
        ["trtexec", f"--onnx={model}", "--int8", f"--calib={cache}",
         "--shapes=x:4x3x224x224", f"--saveEngine={tmp_path / 'trtexec.plan'}"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "trtexec.plan").stat().st_size > 0
    assert cache.read_bytes() == before  # trtexec used it rather than recalibrating over it


def test_build_profile_is_not_frozen_to_the_calibration_batch(backend, tmp_path):
    """Issue 10 d: calibrate at batch 4, build for batches 1..16, run a batch of 8."""
    import onnx
    from onnx import TensorProto, helper

    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.trt import engine
    from trtkld.trt.calibrator import KLDCalibrator

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    proto = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "r", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = str(tmp_path / "relu.onnx")
    onnx.save(proto, model)
    folder = tmp_path / "npy"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.save(folder / f"s{i}.npy", rng.standard_normal(16).astype(np.float32))
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=4)
    with KLDCalibrator(data, "ppq", tmp_path / "r.cache", model, device_backend=backend,
                       quiet=True) as calib:
        plan, _ = engine.build_int8_engine(
            model, calib, calibration_shapes=calib.calibration_shapes(),
            min_shapes={"x": (1, 16)}, opt_shapes={"x": (8, 16)}, max_shapes={"x": (16, 16)},
        )
        calib.check()
    assert plan is not None
    session = engine.EngineSession(plan, backend)
    try:
        big = rng.standard_normal((8, 16)).astype(np.float32)
        out = session.run({"x": big})["y"]
        assert out.shape == (8, 16)
        np.testing.assert_allclose(out, np.maximum(big, 0), atol=0.1)
    finally:
        session.close()
