"""The TensorRT layer without TensorRT: import hygiene, `trtkld build`'s errors, the CUDA kernel
rule (compiled with nvcc where it exists), the device interface and the GPU collector's logic.

Oracles: trtkld.histogram (abs_histogram / tensor_stats, the CPU implementation of the shared
binning rule) and trtkld.pipeline.collect_histograms on the same model and data.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.trt_fakes import make_fake_tensorrt
from trtkld.cli.main import main
from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import Batch, input_specs_from_onnx, open_data
from trtkld.histogram import abs_histogram, tensor_stats
from trtkld.pipeline import collect_histograms
from trtkld.trt import kernels
from trtkld.trt.device import DeviceBufferError, HostBufferBackend, InputBuffers
from trtkld.trt.gpu_collect import collect_histograms_tensorrt, decode_stats

BLOCKED = ("tensorrt", "pycuda", "pycuda.driver", "pycuda.compiler", "pycuda.autoinit", "cuda")


def test_every_trtkld_module_imports_without_tensorrt_or_pycuda():
    script = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any import of them raises ImportError
        import trtkld
        failed = {{}}
        names = []
        for mod in pkgutil.walk_packages(trtkld.__path__, "trtkld."):
            names.append(mod.name)
            try:
                importlib.import_module(mod.name)
            except Exception as exc:
                failed[mod.name] = repr(exc)
        leaked = [n for n in {BLOCKED!r} if sys.modules.get(n) is not None]
        print(json.dumps({{"names": names, "failed": failed, "leaked": leaked}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "trtkld.trt._backend" in report["names"] and "trtkld.trt.calibrator" in report["names"]
    assert report["failed"] == {}
    assert report["leaked"] == []


def _tiny_model(path) -> str:
    """x [N,4] -> log(x) (NaN for x<0, -inf for 0), x*0 (all zero), relu(x)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("lg", "z", "r")]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("Log", ["x"], ["lg"]),
        helper.make_node("Mul", ["x", "zero"], ["z"]),
        helper.make_node("Relu", ["x"], ["r"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], outs, initializer=[zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


# ------------------------------------------------------------------------------ trtkld build


def test_build_without_tensorrt_fails_with_the_clear_message(monkeypatch, tmp_path, capsys):
    model = _tiny_model(tmp_path / "tiny.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc = main(["build", model, "--cache", str(tmp_path / "t.cache")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("trtkld build: error: TensorRT's Python package `tensorrt` cannot")
    assert "pip install trtkld[tensorrt]" in err and "Traceback" not in err
    assert not (tmp_path / "t.cache").exists()


def test_build_under_tensorrt_11_points_to_qdq(monkeypatch, tmp_path, capsys):
    model = _tiny_model(tmp_path / "tiny.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("11.0.0", calibrators=False))
    assert main(["build", model]) == 2
    err = capsys.readouterr().err
    assert "TensorRT 11.0.0 has no INT8 calibrator API" in err and "`trtkld qdq`" in err


def test_build_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--cache", "--engine", "--method", "--data", "--collector", "--calibrator"):
        assert option in out


# ------------------------------------------------------------------------------ the kernel rule


def _adversarial(num_bins: int, hist_max: float, rng) -> np.ndarray:
    """Values at and around every bin edge, |x| == R, above R, -0, subnormals, NaN, +-inf."""
    edges = np.arange(num_bins + 1, dtype=np.float64) * (hist_max / num_bins)
    e32 = edges.astype(np.float32)
    near = np.concatenate(
        [e32, np.nextafter(e32, np.float32(0)), np.nextafter(e32, np.float32(np.inf))]
    )
    specials = np.array(
        [0.0, -0.0, 1e-45, -1e-45, hist_max, -hist_max, 2 * hist_max, np.nan, np.inf, -np.inf],
        dtype=np.float32,
    )
    noise = (rng.standard_normal(5000) * hist_max / 3).astype(np.float32)
    signs = np.where(rng.random(near.size) < 0.5, -1, 1).astype(np.float32)
    return np.concatenate([near * signs, specials, noise]).astype(np.float32)


@pytest.mark.parametrize("num_bins, hist_max", [(2048, 6.0), (4096, 0.1234567), (7, 3.0e-3)])
def test_host_test_backend_kernels_equal_the_cpu_histogram(num_bins, hist_max):
    rng = np.random.default_rng(num_bins)
    x = _adversarial(num_bins, hist_max, rng)
    backend = HostBufferBackend()
    src, bins, st = (backend.allocate(n) for n in (x.nbytes, num_bins * 8, kernels.STATS_LEN * 8))
    backend.copy_htod(src, x)
    backend.memset_zero(bins, num_bins * 8)
    backend.memset_zero(st, kernels.STATS_LEN * 8)
    half = x.size // 2  # two launches accumulate, as two batches do
    inv = float(np.float64(num_bins) / np.float64(np.float32(hist_max)))
    start = backend.device_ptr(src)
    for ptr, n in ((start, half), (start + 4 * half, x.size - half)):
        backend.histogram(ptr, n, inv, num_bins, bins)
        backend.stats(ptr, n, st)
    counts = np.zeros(num_bins, dtype=np.uint64)
    raw = np.zeros(kernels.STATS_LEN, dtype=np.uint64)
    backend.copy_dtoh(counts, bins)
    backend.copy_dtoh(raw, st)
    np.testing.assert_array_equal(
        counts.astype(np.int64), abs_histogram(x, num_bins, float(np.float32(hist_max)))
    )
    assert decode_stats(raw) == tensor_stats(x)
    for h in (src, bins, st):
        backend.free(h)
    assert backend.live_buffers == 0


def test_order_key_round_trips_and_is_monotonic():
    values = np.array([-np.inf, -3.5, -1e-45, -0.0, 0.0, 1e-45, 2.0, np.inf], dtype=np.float32)
    bits = values.view(np.uint32).astype(np.int64)
    keys = [((b ^ 0xFFFFFFFF) if b & 0x80000000 else (b | 0x80000000)) for b in bits]
    assert keys == sorted(keys)
    assert [kernels.decode_order_key(k) for k in keys] == list(bits)


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not on PATH: kernel not compiled")
def test_kernel_source_compiles_to_ptx(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text(kernels.SOURCE)
    out = subprocess.run(
        [NVCC, "--ptx", "-o", str(tmp_path / "k.ptx"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    for name in (kernels.HISTOGRAM_KERNEL, kernels.HISTOGRAM_GLOBAL_KERNEL, kernels.STATS_KERNEL):
        assert f".entry {name}(" in ptx  # extern "C": unmangled, as SourceModule looks them up


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not on PATH: kernel not compiled")
def test_kernel_bin_index_equals_the_cpu_rule_when_run_on_the_host(tmp_path):
    """The kernel's own __host__ __device__ binning function, compiled by nvcc for the host."""
    num_bins, hist_max = 4096, np.float32(0.7310586)
    x = _adversarial(num_bins, float(hist_max), np.random.default_rng(1))
    x = x[np.isfinite(x)]
    inv = np.float64(num_bins) / np.float64(hist_max)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    harness = kernels.SOURCE + textwrap.dedent(
        f"""
        #include <cstdio>
        int main() {{
            FILE* f = fopen("{tmp_path / 'x.bin'}", "rb");
            FILE* o = fopen("{tmp_path / 'idx.bin'}", "wb");
            float v;
            while (fread(&v, sizeof v, 1, f) == 1) {{
                int i = trtkld_bin_index(v, {float(inv)!r}, {num_bins});
                fwrite(&i, sizeof i, 1, o);
            }}
            fclose(f); fclose(o);
            return 0;
        }}
        """
    )
    # repr() of the float64 round-trips exactly, so the C literal is the same double.
    (tmp_path / "h.cu").write_text(harness)
    exe = tmp_path / "h"
    build = subprocess.run(
        [NVCC, "-o", str(exe), str(tmp_path / "h.cu")], capture_output=True, text=True, timeout=300
    )
    if build.returncode != 0 and "host compiler" in build.stderr.lower():
        pytest.skip(f"nvcc has no usable host compiler here: {build.stderr.strip()[:200]}")
    assert build.returncode == 0, build.stderr
    subprocess.run([str(exe)], check=True, timeout=60)
    idx = np.fromfile(tmp_path / "idx.bin", dtype=np.int32)
    expected = np.minimum(
        np.floor(np.abs(x).astype(np.float64) * inv).astype(np.int64), num_bins - 1
    )
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(
        np.bincount(idx, minlength=num_bins), abs_histogram(x, num_bins, float(hist_max))
    )


# ------------------------------------------------------------------------------ device buffers


def test_input_buffers_are_sized_once_and_freed_once():
    backend = HostBufferBackend()
    buffers = InputBuffers(backend)
    buffers.reserve("x", 64)
    ptr = buffers.upload("x", np.arange(8, dtype=np.float32))
    assert buffers.upload("x", np.arange(16, dtype=np.float32)) == ptr
    with pytest.raises(DeviceBufferError, match="does not fit its 64-byte device buffer"):
        buffers.upload("x", np.arange(17, dtype=np.float32))
    with buffers:
        assert backend.live_buffers == 1
    assert backend.live_buffers == 0
    buffers.close()
    with pytest.raises(DeviceBufferError, match="already closed"):
        buffers.reserve("y", 8)


def test_host_backend_refuses_use_after_free():
    backend = HostBufferBackend()
    h = backend.allocate(16)
    backend.free(h)
    with pytest.raises(DeviceBufferError, match="after free"):
        backend.device_ptr(h)


# ------------------------------------------------------------------------------ GPU collector logic


class OrtHostRunner:
    """TEST double of TensorRTEngineRunner: ONNX Runtime computes the activations, which are
    written into host test buffers; inputs are read back from the pointers they were given."""

    def __init__(self, onnx_path, profile, backend):
        self.collector = OnnxRuntimeCollector(onnx_path)
        self.specs = {s.name: s for s in input_specs_from_onnx(onnx_path)}
        self.input_names = list(self.specs)
        self.output_names = [n for n in self.collector.tensor_names if n not in self.specs]
        self.profile = profile
        self.backend = backend
        self._buffers = {}

    def run(self, ptrs, shapes):
        inputs = {}
        for name in self.input_names:
            assert tuple(shapes[name]) <= tuple(self.profile[name][2])
            host = np.empty(shapes[name], dtype=self.specs[name].dtype)
            self.backend.copy_dtoh_ptr(host, ptrs[name])
            inputs[name] = host
        acts = self.collector.run(Batch(inputs=inputs, sources=("device",)))
        out = {}
        for name in self.output_names:
            arr = np.ascontiguousarray(acts[name], dtype=np.float32)
            if name not in self._buffers or self._buffers[name][1] < arr.nbytes:
                self._buffers[name] = (self.backend.allocate(arr.nbytes), arr.nbytes)
            self.backend.copy_htod(self._buffers[name][0], arr)
            out[name] = (self.backend.device_ptr(self._buffers[name][0]), arr.size)
        return out

    def close(self):
        for handle, _ in self._buffers.values():
            self.backend.free(handle)
        self._buffers = {}


@pytest.mark.parametrize("num_bins", [2048, 4096])
def test_gpu_collector_logic_equals_the_cpu_pipeline(tmp_path, num_bins):
    model = _tiny_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "npy"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(7):
        x = (rng.standard_normal(4) * (i + 1)).astype(np.float32)
        x[i % 4] = 0.0  # log(0) = -inf
        np.save(folder / f"x{i}.npy", x)
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=3)
    backend = HostBufferBackend()
    gpu = collect_histograms_tensorrt(
        model, data, num_bins=num_bins, backend=backend, runner_factory=OrtHostRunner, quiet=True
    )
    cpu = collect_histograms(model, data, num_bins=num_bins, quiet=True)
    assert list(gpu) == list(cpu) == ["x", "lg", "z", "r"]
    assert gpu == cpu  # counts, hist_max and statistics, exactly
    assert gpu["lg"].num_nan > 0 and gpu["lg"].num_neginf == 7
    assert gpu["z"].hist_max == 0.0 and not gpu["z"].counts.any()
    assert backend.live_buffers == 0  # every device buffer freed


def test_gpu_collector_include_exclude(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"x{i}.npy", np.arange(4, dtype=np.float32) + i)
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=2)
    hists = collect_histograms_tensorrt(
        model, data, num_bins=2048, backend=HostBufferBackend(), runner_factory=OrtHostRunner,
        include=["x", "l.*", "r"], exclude=["r"], quiet=True,
    )
    assert list(hists) == ["x", "lg"]


def test_calibrator_with_the_tensorrt_collector(monkeypatch, tmp_path, caplog):
    """KLDCalibrator(collector="tensorrt") wiring: device histograms -> search -> cache.

    The TensorRT engine is replaced by OrtHostRunner, so the cache must equal the CPU
    pipeline's byte for byte; the sidecar records the collector, and asking for the other
    collector regenerates the cache.
    """
    import logging

    from trtkld.pipeline import calibrate
    from trtkld.trt import engine
    from trtkld.trt.calibrator import KLDCalibrator

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.9.0"))
    monkeypatch.setattr(engine, "TensorRTEngineRunner", OrtHostRunner)
    model = _tiny_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "npy"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5):
        np.save(folder / f"x{i}.npy", (rng.standard_normal(4) * (i + 1)).astype(np.float32))
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=2)
    cache = tmp_path / "t.cache"
    backend = HostBufferBackend()
    with KLDCalibrator(
        data, "ppq", cache, model, collector="tensorrt", device_backend=backend, quiet=True
    ) as calib:
        got = calib.prepare()  # collector "tensorrt": before the build, never inside it
        assert calib.read_calibration_cache() == got
        calib.check()
    _, outcomes = calibrate(model, data, ["ppq"], trt_version="10.9.0", quiet=True)
    assert got == outcomes["ppq"].cache.to_bytes() == cache.read_bytes()
    assert json.loads((tmp_path / "t.cache.trtkld.json").read_text())["collector"] == "tensorrt"
    assert backend.live_buffers == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trtkld.trt"):
        KLDCalibrator(
            data, "ppq", cache, model, device_backend=backend, quiet=True
        ).read_calibration_cache()
    assert "histograms came from the 'tensorrt' collector, 'onnxruntime' was asked" in caplog.text
