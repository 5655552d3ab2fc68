"""Issue 11 below the command line: the shared writer, bounded reads, images, data loaders,
histogram files, grouped warnings and the cache's provenance (sidecar + reuse)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.trt_fakes import make_fake_tensorrt
from trtkld._io import atomic_write
from trtkld.cache import sidecar
from trtkld.data import InputSpec, PreprocessOptions, input_specs_from_onnx, open_data
from trtkld.errors import DataError, SearchError, TrtkldError
from trtkld.pipeline import calibrate
from trtkld.search import run_search


# ------------------------------------------------------------------ the shared writer
def test_writer_never_opens_a_planted_temporary_name(tmp_path, monkeypatch):
    """Whatever name the writer tries first, a file or symlink already there is left alone."""
    import tempfile

    victim = tmp_path / "victim.txt"
    victim.write_text("user data")
    target = tmp_path / "out.bin"
    planted = ["planted", "planted", "fresh"]
    names = iter(planted)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    os.symlink(victim, tmp_path / ".out.bin.planted.tmp")
    sha = atomic_write(target, b"new bytes")
    assert victim.read_text() == "user data"
    assert target.read_bytes() == b"new bytes"
    assert sha == hashlib.sha256(b"new bytes").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.bin.planted.tmp", "out.bin", "victim.txt"]


def test_writer_hashes_what_it_wrote_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "h.npz"
    target.write_bytes(b"previous")

    def write(f):
        np.savez(f, a=np.arange(5))

    sha = atomic_write(target, write)
    assert sha == hashlib.sha256(target.read_bytes()).hexdigest()

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert sha == hashlib.sha256(target.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npz"]


def test_cache_pair_writers_in_threads_always_leave_a_matching_pair(tmp_path):
    """Many writers of one cache path, one reader: every pair read together agrees."""
    path = tmp_path / "m.cache"
    stop = threading.Event()
    problems = []

    def writer(i):
        for k in range(30):
            data = f"TRT-100900-EntropyCalibration2\nt: {i:02x}{k:06x}\n".encode()
            sidecar.write_cache_and_metadata(path, data, {"writer": i, "round": k})

    def reader():
        while not stop.is_set():
            if not path.exists():
                continue
            raw, meta = sidecar.read_cache_and_metadata(path)
            if meta is not None and meta["sha256"] != hashlib.sha256(raw).hexdigest():
                problems.append(meta)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert problems == []
    raw, meta = sidecar.read_cache_and_metadata(path)
    assert raw.decode().split("t: ")[1].startswith(f"{meta['writer']:02x}{meta['round']:06x}")


# ------------------------------------------------------------------ bounded reads
def _without_hanging(fn, fifo: Path, timeout: float = 15.0):
    """``fn()`` in a thread; a FIFO open that blocks past ``timeout`` fails the test (and is
    released by opening the FIFO's write end, so no thread is left behind)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
        pytest.fail(f"reading the FIFO {fifo} blocked for more than {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.parametrize("kind", ["fifo", "folder", "too big"])
def test_reads_are_regular_files_within_a_limit(tmp_path, kind):
    path = tmp_path / "x.cache"
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would hang here
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"x" * 101)
    from trtkld._io import read_regular_file
    from trtkld.errors import CacheFormatError

    with pytest.raises(CacheFormatError, match="x.cache"):
        _without_hanging(lambda: read_regular_file(path, limit=100, what="calibration cache",
                                                   error=CacheFormatError), path)


def test_histogram_load_refuses_a_fifo(tmp_path):
    from trtkld.histogram import HistogramSet

    fifo = tmp_path / "h.npz"
    os.mkfifo(fifo)
    with pytest.raises(TrtkldError, match="FIFO"):
        _without_hanging(lambda: HistogramSet.load(fifo), fifo)


# ------------------------------------------------------------------ images
def _spec(h=64, w=64):
    return InputSpec("x", (1, 3, h, w), np.dtype(np.float32))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    """A real 16-bit greyscale PNG (scikit-image's camera scaled to 16 bits) preprocesses
    exactly as its 8-bit original: Pillow's own conversion clips it to almost all white."""
    from PIL import Image
    from skimage import data as skdata

    camera = skdata.camera()  # uint8, 512x512
    wide = camera.astype(np.uint16) * 257  # 0..255 -> 0..65535
    Image.fromarray(wide).save(tmp_path / "camera16.png")
    Image.fromarray(camera).save(tmp_path / "camera8.png")
    with Image.open(tmp_path / "camera16.png") as im:
        assert im.mode in ("I;16", "I")  # really a 16-bit file
    pipeline = PreprocessOptions(resize=None, crop=None).resolve(
        InputSpec("x", (1, 3, 512, 512), np.dtype(np.float32)))
    got = pipeline.load(tmp_path / "camera16.png")
    want = pipeline.load(tmp_path / "camera8.png")
    np.testing.assert_array_equal(got, want)
    white = (1 - 0.485) / 0.229
    assert np.mean(np.isclose(got[0], white)) < 0.05


@pytest.mark.parametrize("options", [{"crop": 100000}, {"resize": 100000},
                                     {"resize": (64, 40000)}])
def test_crop_and_resize_limits(options):
    with pytest.raises(DataError, match="limit|between"):
        PreprocessOptions(**options).resolve(_spec())


def test_a_resize_that_explodes_a_tall_image_is_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4000)).save(tmp_path / "tall.png")
    pipeline = PreprocessOptions(resize=16000, crop=None).resolve(
        InputSpec("x", (1, 3, "H", "W"), np.dtype(np.float32)))
    with pytest.raises(DataError, match="tall.png.*pixels"):
        pipeline.check_size(4, 4000, str(tmp_path / "tall.png"))


# ------------------------------------------------------------------ data loaders
def _tiny_model(path) -> str:
    """x[N,4] -> Relu -> y; zeros = x*0 and zeros2 = Relu(zeros): two all-zero tensors."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Mul", ["x", "zero"], ["zeros"]),
        helper.make_node("Relu", ["zeros"], ["zeros2"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])
         for n in ("y", "zeros", "zeros2")],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_max_samples_bounds_a_loader(tmp_path):
    model = _tiny_model(tmp_path / "t.onnx")

    def forever():
        k = 0
        while True:
            k += 1
            yield {"x": np.full((4,), k, np.float32)}

    data = open_data(forever, input_specs_from_onnx(model), batch_size=2, max_samples=7)
    assert data.num_samples == 7 and len(data) == 4


def test_loader_system_exit_is_a_data_error(tmp_path):
    model = _tiny_model(tmp_path / "t.onnx")

    def quits():
        raise SystemExit(0)

    data = open_data(quits, input_specs_from_onnx(model))
    with pytest.raises(DataError, match=r"sys\.exit\(0\)"):
        len(data)


# ------------------------------------------------------------------ warnings, histograms
def test_all_zero_tensors_give_one_warning_line_listed_in_full_at_debug(tmp_path, caplog):
    model = _tiny_model(tmp_path / "t.onnx")
    rows = [{"x": np.array([1, -2, 3, 4], np.float32)}] * 4
    data = open_data(rows, input_specs_from_onnx(model))
    with caplog.at_level(logging.DEBUG, logger="trtkld"):
        calibrate(model, data, ["max"], trt_version="10.9.0", quiet=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "zero" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 tensor(s)"), warnings
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("'zeros'" in m for m in debug) and any("'zeros2'" in m for m in debug)


def test_histogram_total_over_the_exact_limit_names_the_real_total():
    counts = np.array([2**62, 2**62, 2**62, 2**62, 0, 1], np.int64)  # int64 sum wraps to 1
    with pytest.raises(SearchError) as exc:
        run_search("max", counts, hist_max=1.0)
    assert str(2**64 + 1) in str(exc.value) and "found 1 " not in str(exc.value) + " "


# ------------------------------------------------------------------ provenance and reuse
@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_tensorrt("10.9.0.34")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _npz_folder(folder: Path, n: int, scale: float = 1.0) -> str:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        np.savez(folder / f"s{i:02d}.npz", x=(rng.laplace(size=(4,)) * scale).astype(np.float32))
    return str(folder)


def test_sidecar_records_model_data_preprocessing_options_and_versions(tmp_path):
    from trtkld.cli.main import main

    model = _tiny_model(tmp_path / "t.onnx")
    data = _npz_folder(tmp_path / "d", 6)
    out = tmp_path / "t.cache"
    assert main(["calibrate", model, "--data", data, "--out", str(out), "-q", "--table", "none",
                 "--trt-version", "10.9.0", "--batch-size", "2"]) == 0
    meta = json.loads(Path(str(out) + ".trtkld.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256(Path(model).read_bytes()).hexdigest()
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["data"]["num_samples"] == 6 and len(meta["data_sha256"]) == 64
    assert meta["trt_version"] == "10.9.0" and meta["trtkld_version"]
    assert "tensorrt_installed" in meta
    options = meta["command_options"]
    assert options["guard_clipped"] == 0.01 and options["algorithm"] == "EntropyCalibration2"
    # the data fingerprint follows the bytes: one changed sample changes it
    again = tmp_path / "again.cache"
    np.savez(Path(data) / "s03.npz", x=np.ones(4, np.float32))
    assert main(["calibrate", model, "--data", data, "--out", str(again), "-q", "--table",
                 "none", "--trt-version", "10.9.0", "--batch-size", "2"]) == 0
    assert json.loads(Path(str(again) + ".trtkld.json").read_text())["data_sha256"] != \
        meta["data_sha256"]


def test_image_preprocessing_is_recorded(tmp_path):
    from trtkld.cli.main import main
    from trtkld.demo import DEMO_CALIB_DIR, demo_model_path

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "camera.jpg").write_bytes((DEMO_CALIB_DIR / "camera.jpg").read_bytes())
    out = tmp_path / "demo.cache"
    assert main(["calibrate", "--demo", "--data", str(folder), "--out", str(out), "-q",
                 "--table", "none", "--trt-version", "10.9.0", "--resample", "bicubic"]) == 0
    prep = json.loads(Path(str(out) + ".trtkld.json").read_text())["data"]["preprocessing"]
    assert prep["resample"] == "bicubic" and prep["channel_order"] == "BGR"
    assert prep["crop"] == [224, 224] and prep["resize"] == ["short", [256]]
    assert demo_model_path().is_file()


def test_calibrator_does_not_reuse_a_cache_after_the_model_or_data_change(fake_trt, tmp_path,
                                                                         caplog):
    from trtkld.cli.main import main
    from trtkld.trt.calibrator import KLDCalibrator
    from trtkld.trt.device import HostBufferBackend

    model = _tiny_model(tmp_path / "t.onnx")
    source = _npz_folder(tmp_path / "d", 6)
    cache = tmp_path / "t.cache"
    assert main(["calibrate", model, "--data", source, "--batch-size", "2", "--out", str(cache),
                 "-q", "--table", "none", "--trt-version", "10.9.0"]) == 0

    def calib(data_source):
        data = open_data(data_source, input_specs_from_onnx(model), batch_size=2)
        return KLDCalibrator(data, "ppq", cache, model, device_backend=HostBufferBackend(),
                             quiet=True)

    same = calib(source)
    same.read_calibration_cache()
    assert same.cache_status == "reused"

    other_data = _npz_folder(tmp_path / "d2", 6, scale=5.0)
    changed = calib(other_data)
    changed.read_calibration_cache()
    assert changed.cache_status == "generated"
    assert "calibration data differ" in changed.regeneration_reason

    # the calibrator rewrote the pair for d2; now the model changes under the same name
    proto = onnx.load(model)
    proto.doc_string = "re-exported"
    onnx.save(proto, model)
    after = calib(other_data)
    after.read_calibration_cache()
    assert after.cache_status == "generated"
    assert "model changed" in after.regeneration_reason
