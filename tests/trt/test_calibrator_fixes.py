"""Issue 10's calibrator fixes a-h on CPU: each test fails on the code before its fix.

Fakes: ``fake_trt`` (the calibrator base classes), ``fake_pycuda`` (per-thread context stacks
that refuse a push/pop during a build), HostBufferBackend (host memory as device memory).
The same behaviours are driven through TensorRT's real bindings in test_real_bindings.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.pycuda_fake import ContextSwitchDuringBuild
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.errors import ModelError, TensorRTUnavailableError
from trtkld.trt.calibrator import CalibrationError, KLDCalibrator
from trtkld.trt.device import HostBufferBackend


def _model(path, inputs: dict) -> str:
    """One Relu per input; ``inputs``: name -> ONNX shape (str for a runtime dim)."""
    vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
    outs = [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, s)
            for n, s in inputs.items()]
    nodes = [helper.make_node("Relu", [n], [f"{n}_out"], name=f"relu_{n}") for n in inputs]
    model = helper.make_model(helper.make_graph(nodes, "m", vis, outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _npz_data(folder, model, n, shapes, batch_size):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        np.savez(folder / f"s{i}.npz", **{k: rng.standard_normal(s).astype(np.float32)
                                          for k, s in shapes.items()})
    return open_data(str(folder), input_specs_from_onnx(model), batch_size=batch_size)


@pytest.fixture
def two(tmp_path):
    model = _model(tmp_path / "two.onnx", {"a": ["N", 2, 3], "b": ["N", 4]})
    data = _npz_data(tmp_path / "d", model, 6, {"a": (2, 3), "b": (4,)}, 2)
    return model, data


# ------------------------------------------------------------------------------ a
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_interrupt_while_making_our_cache_never_lets_tensorrt_calibrate(
    fake_trt, two, tmp_path, monkeypatch, exc
):
    """The trampoline swallows ANY exception and TensorRT would then calibrate by itself."""
    from trtkld.collect import OnnxRuntimeCollector

    def interrupted(self, batch):  # Ctrl-C while ONNX Runtime collects the activations
        raise exc("interrupted while collecting")

    monkeypatch.setattr(OnnxRuntimeCollector, "run", interrupted)
    model, data = two
    calib = KLDCalibrator(data, "ppq", tmp_path / "m.cache", model,
                          device_backend=HostBufferBackend(), quiet=True)
    assert calib.read_calibration_cache() is None  # recorded, not raised into the trampoline
    assert calib.get_batch(["a", "b"]) is None  # TensorRT's own calibration gets no batch
    assert calib.batches_served == 0
    with pytest.raises(exc, match="interrupted while collecting"):
        calib.check()
    assert not (tmp_path / "m.cache").exists()


def test_a_get_batch_refuses_for_a_search_method(fake_trt, two, tmp_path):
    model, data = two
    calib = KLDCalibrator(data, "nvidia", tmp_path / "m.cache", model,
                          device_backend=HostBufferBackend(), quiet=True)
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(CalibrationError, match="method 'nvidia' must calibrate from our cache"):
        calib.check()


def test_a_interrupt_in_get_batch_and_write_is_recorded(fake_trt, two, tmp_path, monkeypatch):
    model, data = two
    calib = KLDCalibrator(data, "tensorrt", tmp_path / "m.cache", model,
                          device_backend=HostBufferBackend(), quiet=True)

    def interrupted(names):
        raise KeyboardInterrupt("in get_batch")

    monkeypatch.setattr(calib.feeder, "next_pointers", interrupted)
    assert calib.get_batch(["a", "b"]) is None
    monkeypatch.setattr("trtkld.cache.sidecar.atomic_write_bytes",
                        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("in write")))
    calib.write_calibration_cache(memoryview(b"TRT-100900-EntropyCalibration2\n"))
    assert [w for w, _ in calib.errors] == ["get_batch", "write_calibration_cache"]
    with pytest.raises(KeyboardInterrupt, match="in get_batch"):
        calib.check()


# ------------------------------------------------------------------------------ b
def _check_trt_profile_rules(network: dict, profile: dict) -> None:
    """TensorRT's rules, written out: static dims equal the network's, only -1 dims vary."""
    assert set(profile) == set(network)
    for name, net in network.items():
        lo, opt, hi = profile[name]
        assert len(lo) == len(opt) == len(hi) == len(net), name
        for axis, d in enumerate(net):
            if d >= 0:
                assert lo[axis] == opt[axis] == hi[axis] == d, (name, axis, profile[name])
            else:
                assert 0 <= lo[axis] <= opt[axis] <= hi[axis], (name, axis, profile[name])


class _ProfileSeen(Exception):
    pass


@pytest.mark.parametrize(
    "inputs, sample_shapes, batch, network",
    [
        # static batch 4 with dynamic H/W
        ({"x": [4, 3, "H", "W"]}, {"x": (4, 3, 8, 6)}, None, {"x": (4, 3, -1, -1)}),
        # mixed: a fully static input next to one with a runtime dimension
        ({"s": [2, 5], "d": [2, "L"]}, {"s": (2, 5), "d": (2, 7)}, None,
         {"s": (2, 5), "d": (2, -1)}),
        # dynamic batch and static features: only the batch axis may go down to 1
        ({"d": ["N", 7]}, {"d": (7,)}, 2, {"d": (-1, 7)}),
    ],
)
def test_b_collector_profile_obeys_tensorrt_rules(
    tmp_path, inputs, sample_shapes, batch, network
):
    from trtkld.trt.gpu_collect import collect_histograms_tensorrt

    model = _model(tmp_path / "m.onnx", inputs)
    data = _npz_data(tmp_path / "d", model, 4, sample_shapes, batch)
    seen = {}

    def runner_factory(onnx_path, profile, backend):
        seen["profile"] = {k: tuple(map(tuple, v)) for k, v in profile.items()}
        raise _ProfileSeen

    with pytest.raises(_ProfileSeen):
        collect_histograms_tensorrt(model, data, num_bins=64, backend=HostBufferBackend(),
                                    runner_factory=runner_factory, quiet=True)
    _check_trt_profile_rules(network, seen["profile"])
    first = next(iter(data))
    for name in network:  # OPT = MAX = the batches' shape
        assert seen["profile"][name][1] == seen["profile"][name][2] == first.inputs[name].shape


def test_b_profile_checker_names_the_rule(tmp_path):
    from trtkld.trt.profiles import check_profile

    with pytest.raises(ModelError, match=r"input 'x': axis 0 is static \(4\)"):
        check_profile({"x": (4, 3, -1, -1)}, {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8))})
    with pytest.raises(ModelError, match="MIN <= OPT <= MAX"):
        check_profile({"x": (-1, 3)}, {"x": ((4, 3), (2, 3), (4, 3))})


# ------------------------------------------------------------------------------ c
def test_c_backend_is_made_before_the_build_and_never_switches_context(
    fake_trt, fake_pycuda, two, tmp_path
):
    model, data = two
    calib = KLDCalibrator(data, "tensorrt", tmp_path / "m.cache", model, quiet=True)
    assert fake_pycuda.pushes == 1  # the primary context, pushed at construction
    with fake_pycuda.building():  # TensorRT's build: callbacks run, no push/pop allowed
        assert calib.read_calibration_cache() is None
        served = 0
        while calib.get_batch(["a", "b"]) is not None:
            served += 1
    calib.check()
    assert served == 3 and fake_pycuda.build_context is fake_pycuda.primary
    calib.close()
    assert fake_pycuda.pops == 1 and fake_pycuda.Context.get_current() is None


def test_c_a_current_context_is_reused_never_pushed_or_popped(
    fake_trt, fake_pycuda, two, tmp_path
):
    """User code did `import pycuda.autoinit`: its context stays the current one."""
    model, data = two
    user = fake_pycuda.Context("autoinit")
    user.push()
    fake_pycuda.pushes = 0
    with KLDCalibrator(data, "tensorrt", tmp_path / "m.cache", model, quiet=True) as calib:
        with fake_pycuda.building():
            assert calib.get_batch(["a", "b"]) is not None
        assert fake_pycuda.build_context is user
    assert (fake_pycuda.pushes, fake_pycuda.pops) == (0, 0)
    assert fake_pycuda.Context.get_current() is user


def test_c_dropped_unclosed_calibrator_pops_its_context(fake_trt, fake_pycuda, two, tmp_path):
    import gc

    model, data = two
    calib = KLDCalibrator(data, "tensorrt", tmp_path / "m.cache", model, quiet=True)
    assert fake_pycuda.Context.get_current() is fake_pycuda.primary
    del calib
    gc.collect()
    assert fake_pycuda.Context.get_current() is None and fake_pycuda.pops == 1


def test_c_contexts_are_per_thread(fake_trt, fake_pycuda, two, tmp_path):
    """Built on one thread, driven from another: the error is recorded and named, not a crash."""
    import threading

    model, data = two
    calib = KLDCalibrator(data, "tensorrt", tmp_path / "m.cache", model, quiet=True)
    got = {}
    worker = threading.Thread(target=lambda: got.update(ptrs=calib.get_batch(["a", "b"])))
    worker.start()
    worker.join()
    assert got == {"ptrs": None}
    with pytest.raises(CalibrationError, match="no current CUDA context on this thread"):
        calib.check()
    calib.close()


def test_c_lazily_made_backend_would_switch_mid_build(fake_trt, fake_pycuda, two, tmp_path):
    """The fake does catch a push inside a build (guards the two tests above)."""
    with fake_pycuda.building(), pytest.raises(ContextSwitchDuringBuild):
        fake_pycuda.primary.push()


def test_c_unclosed_backend_is_released_at_exit(tmp_path, repo_root):
    """An unclosed calibrator's context is popped by a finalizer, so exit does not abort."""
    script = textwrap.dedent(
        """
        import atexit, os
        import pytest
        from tests.helpers.pycuda_fake import install_fake_pycuda
        mp = pytest.MonkeyPatch()
        cuda = install_fake_pycuda(mp)

        def pycuda_cleanup():  # pycuda aborts if the context stack is not empty at exit
            if cuda.stack:
                print("PyCUDA ERROR: The context stack was not empty upon module cleanup")
                os._exit(3)

        atexit.register(pycuda_cleanup)
        from trtkld.trt._backend import PycudaBackend
        keep = PycudaBackend()  # never closed
        print("pushed", cuda.pushes)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=str(repo_root), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pushed 1" in proc.stdout


# ------------------------------------------------------------------------------ d
class _Obj:
    def __init__(self, log, name):
        self._log, self._name = log, name
        self.num_optimization_profiles = 0

    def set_shape(self, name, lo, opt, hi):
        self._log.append((self._name, "set_shape", name, tuple(lo), tuple(opt), tuple(hi)))


class _Builder:
    def __init__(self):
        self.log, self.n = [], 0

    def create_optimization_profile(self):
        self.n += 1
        return _Obj(self.log, f"profile{self.n}")


class _Config:
    def __init__(self):
        self.flags, self.added, self.calibration = [], [], None
        self.int8_calibrator = None

    def set_flag(self, flag):
        self.flags.append(flag)

    def add_optimization_profile(self, p):
        self.added.append(p)

    def set_calibration_profile(self, p):
        self.calibration = p


class _Net:
    def __init__(self, shapes):
        self._inputs = [type("I", (), {"name": n, "shape": s})() for n, s in shapes.items()]
        self.num_inputs = len(self._inputs)

    def get_input(self, i):
        return self._inputs[i]


def test_d_build_profile_is_separate_from_the_calibration_profile():
    from trtkld.trt.engine import configure_int8

    trt = type("trt", (), {"BuilderFlag": type("F", (), {"INT8": "INT8"})})
    builder, config = _Builder(), _Config()
    net = _Net({"x": (-1, 3, -1, -1)})
    build = configure_int8(
        trt, builder, net, config, "calib", calibration_shapes={"x": (8, 3, 224, 224)},
        min_shapes={"x": (1, 3, 128, 128)}, opt_shapes={"x": (4, 3, 224, 224)},
        max_shapes={"x": (32, 3, 512, 512)},
    )
    assert build == {"x": ((1, 3, 128, 128), (4, 3, 224, 224), (32, 3, 512, 512))}
    assert config.flags == ["INT8"] and config.int8_calibrator == "calib"
    assert len(config.added) == 1 and config.calibration is not config.added[0]
    by_profile = {entry[0]: entry[2:] for entry in builder.log}
    assert by_profile[config.added[0]._name] == (
        "x", (1, 3, 128, 128), (4, 3, 224, 224), (32, 3, 512, 512))
    assert by_profile[config.calibration._name] == (
        "x", (1, 3, 224, 224), (8, 3, 224, 224), (8, 3, 224, 224))


def test_d_build_profile_defaults_to_the_calibration_profile_and_checks_rules():
    from trtkld.trt.engine import configure_int8

    trt = type("trt", (), {"BuilderFlag": type("F", (), {"INT8": "INT8"})})
    net = _Net({"x": (-1, 3), "y": (2, -1)})
    build = configure_int8(trt, _Builder(), net, _Config(), None,
                           calibration_shapes={"x": (4, 3), "y": (2, 9)},
                           max_shapes={"x": (16, 3)})
    assert build["x"] == ((16, 3), (16, 3), (16, 3))  # one option: that shape for all three
    assert build["y"] == ((2, 9), (2, 9), (2, 9))
    with pytest.raises(ModelError, match="axis 0 is static"):
        configure_int8(trt, _Builder(), net, _Config(), None,
                       calibration_shapes={"x": (4, 3), "y": (2, 9)},
                       min_shapes={"y": (1, 9)}, max_shapes={"y": (2, 9)})


def test_d_build_cli_has_shape_options(capsys):
    from trtkld.cli.main import main
    from trtkld.trt.profiles import parse_shapes

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    for option in ("--min-shapes", "--opt-shapes", "--max-shapes"):
        assert option in out
    assert parse_shapes("images:1x3x224x224,onnx::in:2x5") == {
        "images": (1, 3, 224, 224), "onnx::in": (2, 5)}
    with pytest.raises(ModelError, match="NAME:DxDx"):
        parse_shapes("images=1x3", "--min-shapes")
    assert main(["build", "model.onnx", "--min-shapes", "images=1x3"]) == 2
    err = capsys.readouterr().err
    assert "--min-shapes: 'images=1x3' is not NAME:DxDx...D" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ e
def test_e_tensorrt_collector_without_prepare_is_a_clear_error(
    fake_trt, two, tmp_path, monkeypatch
):
    from trtkld.trt import engine

    built = []

    class NestedBuild:
        def __init__(self, *a):
            built.append(a)
            raise AssertionError("a second TensorRT build inside the first")

    monkeypatch.setattr(engine, "TensorRTEngineRunner", NestedBuild)
    model, data = two
    calib = KLDCalibrator(data, "ppq", tmp_path / "m.cache", model, collector="tensorrt",
                          device_backend=HostBufferBackend(), quiet=True)
    assert calib.read_calibration_cache() is None
    assert built == []
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(CalibrationError, match=r"call calib.prepare\(\) before"):
        calib.check()


# ------------------------------------------------------------------------------ f
def test_f_no_nvcc_and_no_cuda_python_names_what_to_install(fake_pycuda, monkeypatch):
    from trtkld.trt import _backend

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(_backend, "import_nvrtc", lambda: None)
    backend = _backend.PycudaBackend()
    with pytest.raises(TensorRTUnavailableError) as err:
        backend.histogram(0, 10, 1.0, 16, 0)
    text = str(err.value)
    assert "nvcc" in text and "cuda-python" in text and "nvidia-cuda-nvrtc" in text
    backend.close()


def test_f_without_nvcc_nvrtc_compiles_the_kernels(fake_pycuda, monkeypatch):
    """NVRTC's calls as cuda-python exposes them; the PTX goes to module_from_buffer."""
    from trtkld.trt import _backend, kernels

    calls = []

    class FakeNvrtc:
        def nvrtcCreateProgram(self, src, name, n, headers, names):
            calls.append(("create", src.decode() == kernels.SOURCE))
            return (0, "prog")

        def nvrtcCompileProgram(self, prog, n, opts):
            calls.append(("compile", opts))
            return (0,)

        def nvrtcGetPTXSize(self, prog):
            return (0, 4)

        def nvrtcGetPTX(self, prog, buf):
            return (0,)

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(_backend, "import_nvrtc", lambda: FakeNvrtc())
    backend = _backend.PycudaBackend()
    backend._functions()
    assert calls[0] == ("create", True)
    assert b"--gpu-architecture=compute_90" in calls[1][1]
    assert fake_pycuda.loaded_ptx == b" " * 4
    backend.close()


# ------------------------------------------------------------------------------ g
class _FakeEngineTrt:
    """Just what EngineSession reads: a Runtime whose engine has one float32 input."""

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    float32 = "f32"

    def __init__(self, accept_shapes: bool):
        outer = self

        class Context:
            def set_input_shape(self, name, shape):
                return accept_shapes

            def set_tensor_address(self, name, ptr):
                outer.addresses = (name, ptr)

        class Engine:
            num_io_tensors = 1

            def get_tensor_name(self, i):
                return "x"

            def get_tensor_mode(self, name):
                return "in"

            def get_tensor_dtype(self, name):
                return "f32"

            def get_tensor_shape(self, name):
                return (4, 3)

            def create_execution_context(self):
                return Context()

        self.Runtime = lambda logger: type("R", (), {
            "deserialize_cuda_engine": lambda self, plan: Engine()})()
        self.__version__ = "10.9.0"

    @staticmethod
    def nptype(t):
        return {"f32": np.float32}[t]


@pytest.mark.parametrize("accept", [True, False])
def test_g_engine_inputs_check_shape_and_dtype(monkeypatch, accept):
    from trtkld.trt import engine

    trt = _FakeEngineTrt(accept_shapes=accept)
    monkeypatch.setattr(engine, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(engine._Logger, "get", classmethod(lambda cls, trt, *a: None))
    session = engine.EngineSession(b"plan", HostBufferBackend())
    with pytest.raises(ModelError, match=r"'x': host array has dtype float64, the engine "
                                         r"expects float32"):
        session.set_inputs({"x": np.zeros((4, 3))})
    if accept:
        session.set_inputs({"x": np.zeros((4, 3), np.float32)})
        assert trt.addresses[0] == "x"
    else:
        with pytest.raises(ModelError, match=r"'x': TensorRT refused shape \[4, 3\]"):
            session.set_inputs({"x": np.zeros((4, 3), np.float32)})
        with pytest.raises(ModelError, match="refused shape"):
            session.set_input_pointers({"x": 0}, {"x": (4, 3)})
    session.close()


# ------------------------------------------------------------------------------ h
def test_h_install_hint_pins_tensorrt_below_11(monkeypatch):
    from trtkld.trt import _backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailableError) as err:
        _backend.import_tensorrt()
    assert 'pip install "tensorrt-cu12<11"' in str(err.value)
    assert "TensorRT 11" in str(err.value)


def test_g_collector_checks_host_vs_engine_dtype(tmp_path):
    from trtkld.errors import DataError
    from trtkld.trt.gpu_collect import collect_histograms_tensorrt

    model = _model(tmp_path / "m.onnx", {"x": ["N", 4]})
    data = _npz_data(tmp_path / "d", model, 2, {"x": (4,)}, 2)

    class HalfEngine:  # an engine built with an FP16 input
        input_names, output_names = ["x"], ["x_out"]

        def __init__(self, *a):
            pass

        def input_dtype(self, name):
            return np.dtype(np.float16)

        def run(self, ptrs, shapes):
            raise AssertionError("ran with the wrong dtype")

        def close(self):
            pass

    with pytest.raises(DataError, match="dtype float32, the TensorRT engine expects float16"):
        collect_histograms_tensorrt(model, data, num_bins=16, backend=HostBufferBackend(),
                                    runner_factory=HalfEngine, quiet=True)
