#!/usr/bin/env python3
"""GPU smoke test of trtkld's TensorRT layer: one command, one results table, exit 1 on failure.

    python tools/gpu_smoke.py            # every part; parts that cannot run here are SKIPped
    python tools/gpu_smoke.py --only kernel --only "real bindings"   # a subset (substring)

Parts, by what they need (a part whose needs are missing is SKIPped with the reason):

- cpu (gcc/g++, CUDA headers, PyPI for the bindings wheel): the kernel source compiles (nvcc or
  NVRTC); ``get_batch`` through TensorRT's real Python bindings with host buffers.
- cuda (an NVIDIA driver + GPU, pycuda; NO TensorRT needed): the CUDA histogram/stats kernels
  equal the CPU kernel bit for bit on adversarial random values and on real activations of the
  demo model; NVRTC-compiled kernels equal nvcc-compiled ones (with cuda-python); the pycuda
  device backend and its context rules; ``get_batch`` through the real bindings returning REAL
  device pointers whose bytes are read back.
- tensorrt (TensorRT 8.6 - 10.x libraries too): the ``tensorrt`` collector on the demo model and
  on a static-batch, dynamic-H/W model; an INT8 build from our cache in which ``get_batch`` is
  never called; a build with ``method="tensorrt"``; a build with ``pycuda.autoinit`` imported
  first; ``trtexec --int8 --calib`` accepting our cache (where trtexec exists).

Runs in well under 8 minutes on one GPU (three small engine builds, two FP32 collector builds).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REALBIND = REPO / "tools" / "realbind"
REALBIND_VERSION = "10.16.1.11"  # bindings wheel for the get_batch parts (CUDA 12 build)


class Skip(Exception):
    """The part cannot run here; the message says why."""


def _harness():
    spec = importlib.util.spec_from_file_location("realbind_harness", REALBIND / "harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ needs
def need_cuda():
    """(pycuda.driver, pycuda.compiler) or Skip: pycuda, a driver and a GPU are needed."""
    from trtkld.errors import TensorRTUnavailableError
    from trtkld.trt import _backend

    try:
        return _backend.import_pycuda()
    except TensorRTUnavailableError as exc:
        raise Skip(f"no CUDA: {exc}") from None


def need_tensorrt():
    from trtkld.errors import TensorRTUnavailableError
    from trtkld.trt import _backend

    need_cuda()
    try:
        return _backend.require_calibrator_api()
    except TensorRTUnavailableError as exc:
        raise Skip(f"no TensorRT with calibrators: {str(exc)[:160]}") from None


# ------------------------------------------------------------------------------ helpers
def _demo(batch_size: int = 4, images: int = 12):
    """(model path, CalibrationData) on the first ``images`` calibration photos."""
    from trtkld import demo
    from trtkld.data import input_specs_from_onnx, open_data

    folder = Path(tempfile.mkdtemp(prefix="trtkld-smoke-imgs-"))
    for src in sorted(Path(demo.DEMO_CALIB_DIR).glob("*.jpg"))[:images]:
        shutil.copy(src, folder / src.name)
    model = str(demo.demo_model_path())
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=batch_size,
                     preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS))
    return model, data


def _adversarial(num_bins: int, hist_max: float, rng) -> np.ndarray:
    """Values at and around every bin edge, |x| == R, above R, -0, subnormals, NaN, +-inf."""
    edges = (np.arange(num_bins + 1, dtype=np.float64) * (hist_max / num_bins)).astype(np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(0)),
                           np.nextafter(edges, np.float32(np.inf))])
    specials = np.array([0.0, -0.0, 1e-45, -1e-45, hist_max, -hist_max, 2 * hist_max,
                         np.nan, np.inf, -np.inf], dtype=np.float32)
    noise = (rng.standard_normal(200_000) * hist_max / 3).astype(np.float32)
    signs = np.where(rng.random(near.size) < 0.5, -1, 1).astype(np.float32)
    return np.concatenate([near * signs, specials, noise]).astype(np.float32)


def _kernel_result(backend, x: np.ndarray, num_bins: int, hist_max: float):
    """(counts, raw stats) of ``x`` from ``backend``'s kernels, in two launches."""
    from trtkld.trt import kernels

    src, bins, st = (backend.allocate(n) for n in (x.nbytes, num_bins * 8, kernels.STATS_LEN * 8))
    try:
        backend.copy_htod(src, x)
        backend.memset_zero(bins, num_bins * 8)
        backend.memset_zero(st, kernels.STATS_LEN * 8)
        inv = float(np.float64(num_bins) / np.float64(np.float32(hist_max)))
        start, half = backend.device_ptr(src), x.size // 2
        for ptr, n in ((start, half), (start + 4 * half, x.size - half)):
            backend.histogram(ptr, n, inv, num_bins, bins)
            backend.stats(ptr, n, st)
        counts = np.zeros(num_bins, dtype=np.uint64)
        raw = np.zeros(kernels.STATS_LEN, dtype=np.uint64)
        backend.copy_dtoh(counts, bins)
        backend.copy_dtoh(raw, st)
        return counts, raw
    finally:
        for h in (src, bins, st):
            backend.free(h)


def _compare_kernels(backend, arrays: list[tuple[str, np.ndarray]], num_bins: int) -> str:
    """GPU kernels vs the CPU kernel (HostBufferBackend) and trtkld.histogram, exactly."""
    from trtkld.histogram import abs_histogram
    from trtkld.trt.device import HostBufferBackend

    host = HostBufferBackend()
    for label, x in arrays:
        finite = x[np.isfinite(x)]
        hist_max = float(np.abs(finite).max(initial=0.0)) or 1.0
        gpu_counts, gpu_raw = _kernel_result(backend, x, num_bins, hist_max)
        cpu_counts, cpu_raw = _kernel_result(host, x, num_bins, hist_max)
        if not np.array_equal(gpu_counts, cpu_counts):
            bad = int(np.flatnonzero(gpu_counts != cpu_counts)[0])
            raise AssertionError(f"{label}: bin {bad}: GPU {gpu_counts[bad]} CPU {cpu_counts[bad]}")
        if not np.array_equal(gpu_raw, cpu_raw):
            raise AssertionError(f"{label}: stats differ: GPU {gpu_raw} CPU {cpu_raw}")
        ref = abs_histogram(x, num_bins, float(np.float32(hist_max)))
        if not np.array_equal(gpu_counts.astype(np.int64), ref):
            raise AssertionError(f"{label}: GPU bins differ from trtkld.histogram.abs_histogram")
    return f"{len(arrays)} tensors, {sum(a.size for _, a in arrays):,} values, {num_bins} bins"


def _real_activations(limit: int = 24) -> list[tuple[str, np.ndarray]]:
    """Intermediate float tensors of the demo model on two calibration batches (ONNX Runtime)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model_path, data = _demo(batch_size=4, images=8)
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    outputs = [vi for vi in model.graph.value_info
               if vi.type.tensor_type.elem_type == TensorProto.FLOAT][:limit]
    model.graph.output.extend(outputs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    arrays = []
    for batch in list(data)[:2]:
        for name, value in zip(names, sess.run(None, dict(batch.inputs))):
            arrays.append((name, np.ascontiguousarray(value, dtype=np.float32).reshape(-1)))
    arrays.append(("x (input)", next(iter(data)).inputs["x"].reshape(-1)))
    return arrays


def _realbind_get_batch(backend: str) -> str:
    harness = _harness()
    try:
        setup = harness.prepare(REALBIND_VERSION)
    except harness.Unavailable as exc:
        raise Skip(f"real bindings {REALBIND_VERSION} unavailable: {exc}") from None
    env = harness.subprocess_env(setup)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(REALBIND / "smoke_get_batch.py"), "--backend",
                           backend], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    result = json.loads(lines[-1])
    if not result["ok"] or proc.returncode != 0:
        raise AssertionError(result["detail"])
    return result["detail"]


# ------------------------------------------------------------------------------ cpu parts
def part_kernel_compiles() -> str:
    from trtkld.trt import _backend, kernels

    nvcc = shutil.which("nvcc")
    if nvcc:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.cu"
            src.write_text(kernels.SOURCE)
            proc = subprocess.run([nvcc, "--ptx", str(src), "-o",
                                   str(Path(tmp) / "k.ptx")], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise AssertionError(f"nvcc failed: {proc.stderr.strip()[-400:]}")
            ptx = (Path(tmp) / "k.ptx").read_text()
        missing = [k for k in (kernels.HISTOGRAM_KERNEL, kernels.HISTOGRAM_GLOBAL_KERNEL,
                               kernels.STATS_KERNEL) if f".entry {k}" not in ptx]
        if missing:
            raise AssertionError(f"PTX lacks entries {missing}")
        return f"nvcc --ptx ok ({nvcc})"
    if _backend.import_nvrtc() is not None:
        ptx = _backend.nvrtc_ptx(kernels.SOURCE, (7, 0))
        return f"NVRTC ok, {len(ptx)} bytes of PTX"
    raise Skip("neither nvcc nor cuda-python's NVRTC is available")


def part_realbind_host() -> str:
    return _realbind_get_batch("host")


# ------------------------------------------------------------------------------ cuda parts
def part_kernels_random() -> str:
    need_cuda()
    from trtkld.trt._backend import PycudaBackend

    backend = PycudaBackend()
    try:
        rng = np.random.default_rng(0)
        arrays = [(f"adversarial B={b} R={r}", _adversarial(b, r, rng))
                  for b, r in ((2048, 6.0), (4096, 0.1234567), (7, 3.0e-3))]
        details = [_compare_kernels(backend, arrays[:2], 2048)]
        details.append(_compare_kernels(backend, arrays, 20000))  # global-memory kernel
        return "; ".join(details)
    finally:
        backend.close()


def part_kernels_real() -> str:
    need_cuda()
    from trtkld.trt._backend import PycudaBackend

    backend = PycudaBackend()
    try:
        return _compare_kernels(backend, _real_activations(), 2048)
    finally:
        backend.close()


def part_nvrtc_equals_nvcc() -> str:
    need_cuda()
    from trtkld.trt import _backend

    if _backend.import_nvrtc() is None or shutil.which("nvcc") is None:
        raise Skip("needs both nvcc and cuda-python (pip install 'cuda-python<13')")
    a = _backend.PycudaBackend(kernel_compiler="nvcc")
    try:
        b = _backend.PycudaBackend(kernel_compiler="nvrtc")
        try:
            rng = np.random.default_rng(1)
            x = _adversarial(2048, 6.0, rng)
            ca, ra = _kernel_result(a, x, 2048, 6.0)
            cb, rb = _kernel_result(b, x, 2048, 6.0)
            if not (np.array_equal(ca, cb) and np.array_equal(ra, rb)):
                raise AssertionError("NVRTC-compiled kernels differ from nvcc-compiled ones")
            return "identical bins and stats"
        finally:
            b.close()
    finally:
        a.close()


def part_device_backend() -> str:
    driver, _ = need_cuda()
    from trtkld.trt._backend import PycudaBackend
    from trtkld.trt.device import InputBuffers

    before = driver.Context.get_current()
    backend = PycudaBackend()
    pushed = backend.owns_context
    try:
        x = np.arange(1000, dtype=np.float32)
        with InputBuffers(backend) as bufs:
            ptr = bufs.upload("x", x)
            back = np.empty_like(x)
            backend.copy_dtoh_ptr(back, ptr)
            if back.tobytes() != x.tobytes():
                raise AssertionError("bytes read back from the device differ")
        nested = PycudaBackend()  # a context is current now: reused, not pushed
        if nested.owns_context:
            raise AssertionError("a second backend pushed a context although one was current")
        nested.close()
    finally:
        backend.close()
    after = driver.Context.get_current()
    if (before is None) != (after is None) or (before is not None and before != after):
        raise AssertionError(f"current context changed: before {before}, after {after}")
    return f"copy round trip ok; primary context pushed once ({pushed}) and popped on close"


def part_realbind_device() -> str:
    need_cuda()
    return _realbind_get_batch("pycuda")


# ------------------------------------------------------------------------------ TensorRT parts
def part_collector_demo() -> str:
    need_tensorrt()
    from trtkld.histogram import TensorHistogram
    from trtkld.trt._backend import PycudaBackend
    from trtkld.trt.gpu_collect import collect_histograms_tensorrt

    model, data = _demo()
    backend = PycudaBackend()
    try:
        seen: dict[str, list[np.ndarray]] = {}
        hists = collect_histograms_tensorrt(
            model, data, num_bins=2048, backend=backend, quiet=True,
            on_tensor=lambda n, a: seen.setdefault(n, []).append(a),
        )
    finally:
        backend.close()
    for name, hist in hists.items():
        cpu = TensorHistogram(name, 2048, hist.hist_max)
        for arr in seen[name]:
            cpu.update(arr)
        if cpu != hist:
            raise AssertionError(f"tensor {name!r}: GPU histogram differs from the CPU one")
    return f"{len(hists)} tensors equal to CPU histograms of the same device values"


def part_collector_static_batch_dynamic_hw() -> str:
    need_tensorrt()
    import onnx
    from onnx import TensorProto, helper

    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.trt._backend import PycudaBackend
    from trtkld.trt.gpu_collect import collect_histograms_tensorrt

    tmp = Path(tempfile.mkdtemp(prefix="trtkld-smoke-hw-"))
    rng = np.random.default_rng(2)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                           rng.standard_normal(108).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "hw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, "H", "W"])],
        initializer=[w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    model = str(tmp / "hw.onnx")
    onnx.save(m, model)
    folder = tmp / "data"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"s{i}.npy", rng.standard_normal((2, 3, 24, 40)).astype(np.float32))
    data = open_data(str(folder), input_specs_from_onnx(model))
    backend = PycudaBackend()
    try:
        hists = collect_histograms_tensorrt(model, data, num_bins=256, backend=backend,
                                            quiet=True)
    finally:
        backend.close()
    if not {"x", "y"} <= set(hists):
        raise AssertionError(f"tensors collected: {list(hists)}")
    return f"profile MIN=OPT=MAX batch 2, H/W from the data; {len(hists)} tensors"


def part_int8_from_our_cache() -> str:
    need_tensorrt()
    from trtkld.trt import engine
    from trtkld.trt.calibrator import KLDCalibrator

    model, data = _demo()
    tmp = Path(tempfile.mkdtemp(prefix="trtkld-smoke-int8-"))
    with KLDCalibrator(data, "ppq", tmp / "demo.cache", model, quiet=True) as calib:
        calib.prepare()
        plan, names = engine.build_int8_engine(model, calib,
                                               calibration_shapes=calib.calibration_shapes())
        calib.check()
        if plan is None:
            raise AssertionError("TensorRT built no engine")
        if calib.get_batch_calls:
            raise AssertionError(f"get_batch was called {calib.get_batch_calls} time(s)")
        if calib.read_cache_calls < 1:
            raise AssertionError("TensorRT never read our cache")
    return f"{len(plan):,}-byte plan; read_calibration_cache x{calib.read_cache_calls}, " \
           f"get_batch x0"


def part_int8_method_tensorrt() -> str:
    need_tensorrt()
    from trtkld.cache import parse_cache
    from trtkld.trt import engine
    from trtkld.trt.calibrator import KLDCalibrator

    model, data = _demo()
    tmp = Path(tempfile.mkdtemp(prefix="trtkld-smoke-builtin-"))
    with KLDCalibrator(data, "tensorrt", tmp / "demo.cache", model, quiet=True) as calib:
        plan, _ = engine.build_int8_engine(model, calib,
                                           calibration_shapes=calib.calibration_shapes())
        calib.check()
        if plan is None:
            raise AssertionError("TensorRT built no engine")
        theirs = parse_cache(calib.tensorrt_cache_file)
    return f"{calib.batches_served} batches served; TensorRT's cache has {len(theirs.scales)} " \
           f"scales ({calib.tensorrt_cache_file.name})"


def part_autoinit_first() -> str:
    need_tensorrt()
    script = textwrap.dedent(
        """
        import pycuda.autoinit  # noqa: F401  -- user code that made its own context
        import pycuda.driver as cuda
        import sys
        sys.path.insert(0, {tools!r})
        from gpu_smoke import _demo
        from trtkld.trt import engine
        from trtkld.trt.calibrator import KLDCalibrator
        import tempfile, pathlib
        ctx = cuda.Context.get_current()
        model, data = _demo()
        tmp = pathlib.Path(tempfile.mkdtemp())
        calib = KLDCalibrator(data, "tensorrt", tmp / "d.cache", model, quiet=True)
        assert not calib.device_backend.owns_context, "pushed a context over autoinit.s"
        shapes = calib.calibration_shapes()
        plan, _ = engine.build_int8_engine(model, calib, calibration_shapes=shapes)
        calib.check()
        assert plan is not None
        assert cuda.Context.get_current() == ctx, "the current context changed"
        calib.close()
        assert cuda.Context.get_current() == ctx, "close() popped autoinit's context"
        print("AUTOINIT-OK", calib.batches_served)
        """
    ).format(tools=str(REPO / "tools"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 or "AUTOINIT-OK" not in proc.stdout:
        raise AssertionError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-500:]}")
    return "autoinit's context used, unchanged after build and close; clean exit"


def part_trtexec() -> str:
    need_tensorrt()
    trtexec = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
         if os.path.exists(p)), None)
    if trtexec is None:
        raise Skip("trtexec not found (on PATH, /usr/src/tensorrt/bin, /opt/tensorrt/bin)")
    from trtkld.trt.calibrator import KLDCalibrator

    model, data = _demo()
    tmp = Path(tempfile.mkdtemp(prefix="trtkld-smoke-trtexec-"))
    with KLDCalibrator(data, "ppq", tmp / "demo.cache", model, quiet=True) as calib:
        calib.prepare()
        shape = "x".join(str(d) for d in calib.calibration_shapes()["x"])
    proc = subprocess.run(
        [trtexec, f"--onnx={model}", "--int8", f"--calib={tmp / 'demo.cache'}",
         f"--shapes=x:{shape}", f"--saveEngine={tmp / 'demo.plan'}"],
        capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "PASSED" not in out:
        raise AssertionError(f"trtexec exit {proc.returncode}: {out[-600:]}")
    if "calibration cache" in out.lower() and "invalid" in out.lower():
        raise AssertionError("trtexec reported an invalid calibration cache")
    return f"trtexec --int8 --calib built {(tmp / 'demo.plan').stat().st_size:,} bytes"


PARTS: list[tuple[str, str, Callable[[], str]]] = [
    ("kernel source compiles (nvcc / NVRTC)", "cpu", part_kernel_compiles),
    ("real bindings: get_batch, host buffers", "cpu", part_realbind_host),
    ("CUDA kernels == CPU kernel (adversarial)", "cuda", part_kernels_random),
    ("CUDA kernels == CPU kernel (real activations)", "cuda", part_kernels_real),
    ("NVRTC kernels == nvcc kernels", "cuda", part_nvrtc_equals_nvcc),
    ("pycuda device backend + context rules", "cuda", part_device_backend),
    ("real bindings: get_batch, device pointers", "cuda", part_realbind_device),
    ("tensorrt collector: demo model", "tensorrt", part_collector_demo),
    ("tensorrt collector: static batch, dynamic H/W", "tensorrt",
     part_collector_static_batch_dynamic_hw),
    ("INT8 build from our cache, no get_batch", "tensorrt", part_int8_from_our_cache),
    ("INT8 build, method=tensorrt", "tensorrt", part_int8_method_tensorrt),
    ("pycuda.autoinit imported first", "tensorrt", part_autoinit_first),
    ("trtexec --int8 --calib accepts our cache", "tensorrt", part_trtexec),
]


def run(parts, out=sys.stdout) -> int:
    rows = []
    for name, needs, func in parts:
        start = time.perf_counter()
        try:
            status, detail = "PASS", func()
        except Skip as exc:
            status, detail = "SKIP", str(exc)
        except Exception as exc:  # a failed part must not stop the others
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        rows.append((name, needs, status, time.perf_counter() - start, detail))
        print(f"  {status} {name}", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'part':<{width}}  needs      result  seconds  detail", file=out)
    print(f"{'-' * width}  ---------  ------  -------  ------", file=out)
    for name, needs, status, secs, detail in rows:
        detail = " ".join(detail.split())
        print(f"{name:<{width}}  {needs:<9}  {status:<6}  {secs:7.1f}  {detail[:300]}", file=out)
    counts = {s: sum(r[2] == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped",
          file=out)
    return 1 if counts["FAIL"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only parts whose name contains this text (repeatable)")
    args = parser.parse_args(argv)
    parts = [p for p in PARTS if not args.only or any(o in p[0] for o in args.only)]
    if not parts:
        parser.error(f"no part matches {args.only}")
    return run(parts)


if __name__ == "__main__":
    sys.exit(main())
