"""TensorRT calibration cache: parse / serialise / atomic write, against real TensorRT files.

Oracles: the cache files TensorRT itself wrote (shared/fixtures/trt_caches, listed in its
README with their TensorRT versions), and a plain reference reader below built on ``struct``.
"""
from __future__ import annotations

import os
import re
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtkld.cache import (
    DEFAULT_TRT_VERSION,
    KNOWN_ALGORITHMS,
    CalibrationCache,
    UnknownAlgorithmWarning,
    format_trt_version,
    parse_cache,
    trt_version_number,
    write_cache,
)
from trtkld.errors import CacheFormatError, TrtkldError

# file -> (TensorRT version, algorithm, tensor count), from shared/fixtures/trt_caches/README.md
FIXTURES = {
    "yolov5_trt8600_entropy2.cache": ("8.6.0", "EntropyCalibration2", 197),
    "deimkit_trt100900_entropy2.cache": ("10.9.0", "EntropyCalibration2", 1907),
    "mpnet_trt101303_minmax.cache": ("10.13.3", "MinMaxCalibration", 842),
}


def reference_read(data: bytes) -> tuple[str, list[tuple[str, int]]]:
    """Plain reader from the spec: header line, then (name, float32 bits) per line."""
    text = data.decode("utf-8")
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    entries = []
    for line in lines[1:]:
        cut = line.rindex(": ")
        entries.append((line[:cut], int(line[cut + 2:], 16)))
    return lines[0], entries


def bits_of(x: float) -> int:
    """float32 bits of a finite value, via struct (independent of the numpy view the code uses)."""
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def cache_bits(cache: CalibrationCache) -> list[tuple[str, int]]:
    return [(n, int(np.asarray(v, dtype=np.float32).view(np.uint32))) for n, v in
            cache.scales.items()]


# --- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "version, number",
    [("8.6.1", 8601), ("8.6.0", 8600), ("7.2.3", 7203), ("10.9.0", 100900),
     ("10.13.3", 101303), ("10.9.0.34", 100900), ("10.0.1", 100001), ("11.0.0", 110000)],
)
def test_trt_version_number(version, number):
    assert trt_version_number(version) == number
    assert format_trt_version(number) == ".".join(version.split(".")[:3])


def test_version_numbers_match_the_headers_tensorrt_wrote(trt_cache_dir):
    for name, (version, algorithm, _) in FIXTURES.items():
        header = (trt_cache_dir / name).read_bytes().split(b"\n", 1)[0].decode()
        assert header == f"TRT-{trt_version_number(version)}-{algorithm}"
        cache = parse_cache(trt_cache_dir / name)
        assert cache.trt_version == version
        assert format_trt_version(cache.version_number) == version


def test_default_version_is_newest_10x_fixture(trt_cache_dir):
    numbers = [parse_cache(trt_cache_dir / n).version_number for n in FIXTURES]
    newest = max(n for n in numbers if 100000 <= n < 110000)
    assert trt_version_number(DEFAULT_TRT_VERSION) == newest


@pytest.mark.parametrize(
    "bad",
    ["", "10", "10.9", "10.9.0.34.1", "a.b.c", "10.9.0-rc1", "v10.9.0", "8.10.0", "10.100.0",
     "10.9.100", "0.9.0", "10..0", None, 10.9, b"10.9.0"],
)
def test_bad_version_strings(bad):
    with pytest.raises(CacheFormatError, match="TensorRT version"):
        trt_version_number(bad)


@pytest.mark.parametrize("bad", [0, 999, 10000, 99999, -8601, True, "100900", 8601.0])
def test_bad_version_numbers(bad):
    with pytest.raises(CacheFormatError, match="version number"):
        format_trt_version(bad)


@given(st.one_of(
    st.tuples(st.integers(1, 9), st.integers(0, 9), st.integers(0, 99)),
    st.tuples(st.integers(10, 99), st.integers(0, 99), st.integers(0, 99)),
))
def test_version_round_trip(parts):
    version = ".".join(map(str, parts))
    number = trt_version_number(version)
    assert format_trt_version(number) == version
    major, minor, patch = parts
    assert number == (major * 1000 if major < 10 else major * 10000) + minor * 100 + patch


# --- real TensorRT files -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_parses_like_reference(trt_cache_dir, name):
    version, algorithm, count = FIXTURES[name]
    data = (trt_cache_dir / name).read_bytes()
    header, entries = reference_read(data)
    cache = parse_cache(trt_cache_dir / name)
    assert cache.algorithm == algorithm
    assert cache.header == header
    assert len(cache.scales) == count == len(entries)
    assert cache_bits(cache) == entries  # same names, same order, same bits
    assert all(isinstance(v, np.float32) for v in cache.scales.values())
    # bytes, str path and Path all give the same cache
    assert cache_bits(parse_cache(data)) == entries
    assert cache_bits(parse_cache(str(trt_cache_dir / name))) == entries


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_round_trips_byte_for_byte(trt_cache_dir, name, tmp_path):
    data = (trt_cache_dir / name).read_bytes()
    cache = parse_cache(data)
    assert cache.to_bytes(allow_nonpositive=True) == data
    out = tmp_path / name
    write_cache(cache, out, allow_nonpositive=True)
    assert out.read_bytes() == data
    # and via the public constructor, from the version string and the plain dict
    rebuilt = CalibrationCache.from_trt_version(cache.trt_version, cache.algorithm,
                                                dict(cache.scales))
    assert rebuilt.to_bytes(allow_nonpositive=True) == data


def test_fixture_zero_scales_need_the_flag(trt_cache_dir):
    # TensorRT writes 0 for some parser-made tensors; we refuse to write that by default.
    cache = parse_cache(trt_cache_dir / "deimkit_trt100900_entropy2.cache")
    zero = next(n for n, v in cache.scales.items() if v == 0)
    with pytest.raises(CacheFormatError, match=re.escape(repr(zero)) + ".*zero"):
        cache.to_bytes()
    # the yolov5 file has only finite positive scales: no flag needed
    data = (trt_cache_dir / "yolov5_trt8600_entropy2.cache").read_bytes()
    assert parse_cache(data).to_bytes() == data


def test_fixture_infinite_scale_is_kept(trt_cache_dir):
    cache = parse_cache(trt_cache_dir / "deimkit_trt100900_entropy2.cache")
    infinite = [n for n, v in cache.scales.items() if np.isinf(v)]
    lines = (trt_cache_dir / "deimkit_trt100900_entropy2.cache").read_text().splitlines()
    assert len(infinite) == sum(line.endswith(": 7f800000") for line in lines) > 0
    with pytest.raises(CacheFormatError, match="infinite"):
        CalibrationCache(cache.version_number, cache.algorithm,
                         {infinite[0]: cache.scales[infinite[0]]}).to_bytes()


def test_one_over_127(trt_cache_dir):
    cache = parse_cache(b"TRT-100900-EntropyCalibration2\nx: 3c010204\n")
    assert cache.scales["x"] == np.float32(1) / np.float32(127) == np.float32(1 / 127)
    # TensorRT wrote exactly this value for a tensor with amax 1 (a Cast of a 0/1 input)
    mpnet = parse_cache(trt_cache_dir / "mpnet_trt101303_minmax.cache")
    assert mpnet.scales["/Cast_output_0"] == np.float32(1 / 127)


def test_names_with_colons_split_on_last_separator(trt_cache_dir):
    cache = parse_cache(trt_cache_dir / "mpnet_trt101303_minmax.cache")
    assert "onnx::MatMul_1472_output" in cache.scales
    cache = parse_cache(b"TRT-8601-EntropyCalibration2\na: b: c: 3f800000\nd:: 0\n e : 1\n")
    assert list(cache.scales) == ["a: b: c", "d:", " e "]
    assert cache.scales["a: b: c"] == np.float32(1.0)
    assert cache.scales["d:"] == 0
    assert int(np.asarray(cache.scales[" e "]).view(np.uint32)) == 1  # smallest subnormal


# --- hex spellings ------------------------------------------------------------------------------

def test_padded_unpadded_and_upper_case_hex_are_the_same_bits():
    cache = parse_cache(
        b"TRT-100900-EntropyCalibration2\n"
        b"a: 0\nb: 00000000\nc: 0000abcd\nd: abcd\ne: 3C010204\nf: 3c010204\n"
    )
    bits = dict(cache_bits(cache))
    assert bits == {"a": 0, "b": 0, "c": 0xABCD, "d": 0xABCD, "e": 0x3C010204, "f": 0x3C010204}
    # written back the TensorRT way: lowercase, not padded
    assert cache.to_bytes(allow_nonpositive=True) == (
        b"TRT-100900-EntropyCalibration2\n"
        b"a: 0\nb: 0\nc: abcd\nd: abcd\ne: 3c010204\nf: 3c010204\n"
    )


def test_missing_final_newline_is_tolerated():
    cache = parse_cache(b"TRT-100900-EntropyCalibration2\nx: 3c010204")
    assert cache.to_bytes() == b"TRT-100900-EntropyCalibration2\nx: 3c010204\n"
    assert parse_cache(b"TRT-100900-EntropyCalibration2").scales == {}
    empty = CalibrationCache.from_trt_version("10.9.0", "EntropyCalibration2", {})
    assert empty.to_bytes() == b"TRT-100900-EntropyCalibration2\n"


def test_nan_payload_bits_survive_a_round_trip():
    data = b"TRT-100900-EntropyCalibration2\nx: 7fc00001\ny: ff800000\nz: 80000000\n"
    assert parse_cache(data).to_bytes(allow_nonpositive=True) == data


# --- malformed files -----------------------------------------------------------------------------

HEADER = "TRT-100900-EntropyCalibration2\n"
MALFORMED = [
    # (file content, line number reported, text the message must quote)
    (HEADER + "x: 3c010204\nno separator 3c010204\n", 3, "no separator 3c010204"),
    (HEADER + "x:3c010204\n", 2, "x:3c010204"),
    (HEADER + "x: 3c0102041\n", 2, "3c0102041"),
    (HEADER + "x: 3g010204\n", 2, "3g010204"),
    (HEADER + "x: 0x3c0102\n", 2, "0x3c0102"),
    (HEADER + "x: -3c010204\n", 2, "-3c010204"),
    (HEADER + "x: \n", 2, "x: "),
    (HEADER + "x: 3c010204 \n", 2, "3c010204 "),
    (HEADER + "x: 3c010204\n\ny: 3c010204\n", 3, "''"),
    (HEADER + "x: 3c010204\n\n", 3, "''"),
    (HEADER + ": 3c010204\n", 2, "empty"),
    (HEADER + "a\0b: 3c010204\n", 2, "NUL"),
    ("TRT-100900-EntropyCalibration2\r\nx: 3c010204\r\n", 1, "carriage return"),
    ("TRT-abc-EntropyCalibration2\n", 1, "TRT-abc-EntropyCalibration2"),
    ("TRT-100900-\n", 1, "TRT-100900-"),
    ("TRT-100900-Entropy Calibration2\n", 1, "Entropy Calibration2"),
    ("TRT-12345-EntropyCalibration2\n", 1, "12345"),
    ("\ufeffTRT-100900-EntropyCalibration2\n", 1, "TRT-100900"),
    ("x: 3c010204\n", 1, "x: 3c010204"),
    (HEADER + "dup: 3c010204\ny: 1\ndup: 3c010205\n", 4, "first on line 2"),
]


@pytest.mark.parametrize("content, line, quoted", MALFORMED)
def test_malformed_file_error_names_file_line_and_content(tmp_path, content, line, quoted):
    path = tmp_path / "bad.cache"
    path.write_bytes(content.encode("utf-8"))
    with pytest.raises(CacheFormatError) as info:
        parse_cache(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}:" in message
    assert quoted in message
    # from bytes: same error, no file name
    with pytest.raises(CacheFormatError, match=f"line {line}:"):
        parse_cache(content.encode("utf-8"))


def test_duplicate_names_on_parse_name_both_lines():
    expected = r"line 4: duplicate tensor name \(first on line 2\)"
    with pytest.raises(CacheFormatError, match=expected):
        parse_cache(HEADER.encode() + b"t: 1\nu: 1\nt: 1\n")


def test_not_utf8_empty_and_missing_files(tmp_path):
    with pytest.raises(CacheFormatError, match="line 2: not valid UTF-8"):
        parse_cache(HEADER.encode() + b"\xff\xfe: 3c010204\n")
    empty = tmp_path / "empty.cache"
    empty.write_bytes(b"")
    with pytest.raises(CacheFormatError, match=re.escape(str(empty)) + ".*empty"):
        parse_cache(empty)
    missing = tmp_path / "missing.cache"
    with pytest.raises(CacheFormatError, match=re.escape(str(missing)) + ".*cannot read"
                       "|cannot read.*" + re.escape(str(missing))):
        parse_cache(missing)
    with pytest.raises(CacheFormatError, match="pass the cache text as bytes"):
        parse_cache(HEADER + "x: 3c010204\n")
    with pytest.raises(CacheFormatError, match="bytes or a path"):
        parse_cache(12)


# --- algorithms -----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", KNOWN_ALGORITHMS)
def test_known_algorithms_parse_without_warning(algorithm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = parse_cache(f"TRT-8601-{algorithm}\nx: 3c010204\n".encode())
    assert cache.algorithm == algorithm
    assert cache.to_bytes() == f"TRT-8601-{algorithm}\nx: 3c010204\n".encode()


def test_unknown_algorithm_warns_on_parse_and_is_refused_on_write(tmp_path):
    path = tmp_path / "legacy.cache"
    path.write_bytes(b"TRT-8601-LegacyCalibration\nx: 3c010204\n")
    with pytest.warns(UnknownAlgorithmWarning, match="LegacyCalibration"):
        cache = parse_cache(path)
    assert cache.algorithm == "LegacyCalibration"
    assert cache.scales["x"] == np.float32(1 / 127)
    with pytest.raises(CacheFormatError, match="unknown calibration algorithm 'LegacyCalibration'"):
        cache.to_bytes()
    with pytest.raises(CacheFormatError, match="unknown calibration algorithm 'Entropy2'"):
        CalibrationCache.from_trt_version("10.9.0", "Entropy2", {"x": 1.0})


# --- construction and write errors -------------------------------------------------------------

def test_construction_from_pairs_keeps_order_and_converts_to_float32():
    cache = CalibrationCache.from_trt_version(
        "10.9.0", "EntropyCalibration2", [("z", 0.5), ("a", np.float64(1 / 127)), ("m", 2)]
    )
    assert list(cache.scales) == ["z", "a", "m"]
    assert all(type(v) is np.float32 for v in cache.scales.values())
    assert cache.to_bytes() == b"TRT-100900-EntropyCalibration2\nz: 3f000000\na: 3c010204\n" \
                               b"m: 40000000\n"


@pytest.mark.parametrize(
    "scales, match",
    [
        ([("t", 1.0), ("t", 2.0)], "duplicate tensor name 't'"),
        ({"": 1.0}, "tensor name is empty"),
        ({"a\nb": 1.0}, "newline"),
        ({"a\rb": 1.0}, "carriage return"),
        ({"a\0b": 1.0}, "NUL"),
        ({"\ud800": 1.0}, "UTF-8"),
        ({3: 1.0}, "must be a string"),
        ({"t": "big"}, "scale of tensor 't' must be a number"),
        ([("t",)], "pair"),
        (5, "mapping or"),
    ],
)
def test_bad_scales_on_construction(scales, match):
    with pytest.raises(CacheFormatError, match=match):
        CalibrationCache.from_trt_version("10.9.0", "EntropyCalibration2", scales)
    with pytest.raises(CacheFormatError, match=match):
        CalibrationCache(100900, "EntropyCalibration2", scales)


def test_bad_header_fields_on_construction():
    with pytest.raises(CacheFormatError, match="version number 12345"):
        CalibrationCache(12345, "EntropyCalibration2", {})
    with pytest.raises(CacheFormatError, match="single word"):
        CalibrationCache(100900, "Entropy Calibration2", {})
    with pytest.raises(CacheFormatError, match="TensorRT version '10.9'"):
        CalibrationCache.from_trt_version("10.9", "EntropyCalibration2", {})


def test_names_added_after_construction_are_checked_on_write(tmp_path):
    cache = CalibrationCache.from_trt_version("10.9.0", "EntropyCalibration2", {"ok": 1.0})
    cache.scales["bad\nname"] = np.float32(1.0)
    with pytest.raises(CacheFormatError, match="newline"):
        cache.to_bytes()
    cache.scales.pop("bad\nname")
    cache.scales[""] = np.float32(1.0)
    with pytest.raises(CacheFormatError, match="empty"):
        write_cache(cache, tmp_path / "x.cache")
    assert not (tmp_path / "x.cache").exists()


@pytest.mark.parametrize(
    "value, reason, bits",
    [(0.0, "zero", 0), (-0.0, "zero", 0x80000000), (-1.0, "negative", 0xBF800000),
     (float("nan"), "NaN", 0x7FC00000), (float("inf"), "infinite", 0x7F800000),
     (float("-inf"), "infinite", 0xFF800000), (1e39, "infinite", 0x7F800000),
     (-1e-45, "negative", 0x80000001)],
)
def test_invalid_scale_on_write(tmp_path, value, reason, bits):
    cache = CalibrationCache.from_trt_version("10.9.0", "EntropyCalibration2",
                                              {"good": 1.0, "conv/out:0": value})
    with pytest.raises(CacheFormatError, match=f"scale of tensor 'conv/out:0' is {reason}"):
        cache.to_bytes()
    with pytest.raises(CacheFormatError, match=reason):
        write_cache(cache, tmp_path / "x.cache")
    assert list(tmp_path.iterdir()) == []
    expected = f"TRT-100900-EntropyCalibration2\ngood: 3f800000\nconv/out:0: {bits:x}\n"
    assert cache.to_bytes(allow_nonpositive=True) == expected.encode()


# --- atomic, deterministic writes --------------------------------------------------------------

def _good_cache() -> CalibrationCache:
    return CalibrationCache.from_trt_version("10.13.3", "EntropyCalibration2",
                                             {"input": 1 / 127, "onnx::MatMul_3": 0.25})


def test_write_is_deterministic(tmp_path):
    write_cache(_good_cache(), tmp_path / "a.cache")
    write_cache(_good_cache(), tmp_path / "b.cache")
    assert (tmp_path / "a.cache").read_bytes() == (tmp_path / "b.cache").read_bytes() == (
        b"TRT-101303-EntropyCalibration2\ninput: 3c010204\nonnx::MatMul_3: 3e800000\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cache", "b.cache"]


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.cache"
    write_cache(_good_cache(), path)
    before = path.read_bytes()
    new = CalibrationCache.from_trt_version("10.13.3", "EntropyCalibration2", {"other": 2.0})

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class FailingFile:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])  # a partial write, then the disk is full
                boom()

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(CacheFormatError, match="cannot write calibration cache .*model.cache.*"
                                               "No space left"):
        write_cache(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.cache"]  # temp file removed


def test_invalid_cache_never_touches_existing_file(tmp_path):
    path = tmp_path / "model.cache"
    write_cache(_good_cache(), path)
    before = path.read_bytes()
    bad = CalibrationCache.from_trt_version("10.13.3", "EntropyCalibration2", {"x": 0.0})
    with pytest.raises(CacheFormatError, match="zero"):
        write_cache(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.cache"]


def test_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "model.cache"
    path.write_bytes(b"old contents")
    os.chmod(path, 0o600)
    write_cache(_good_cache(), path)
    assert path.read_bytes() == _good_cache().to_bytes()
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600


def test_write_into_missing_folder_is_a_clear_error(tmp_path):
    target = tmp_path / "no_such_dir" / "model.cache"
    with pytest.raises(CacheFormatError, match="cannot write calibration cache .*no_such_dir"):
        write_cache(_good_cache(), target)
    assert isinstance(CacheFormatError("x"), TrtkldError)


# --- property: any writable name and finite positive scale round-trips -------------------------

name_piece = st.one_of(
    st.text(alphabet=st.characters(exclude_characters="\n\r\0", exclude_categories=("Cs",)),
            min_size=1, max_size=12),
    st.sampled_from([": ", ":", " ", "::", ": : ", "TRT-100900-EntropyCalibration2", ": 3c010204",
                     "\t", "\u2028", "\x85", "(Unnamed Layer* 3) [Shuffle]_output"]),
)
names = st.lists(name_piece, min_size=1, max_size=4).map("".join)
positive_float32 = st.floats(min_value=0.0, exclude_min=True, allow_nan=False,
                             allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.tuples(names, positive_float32), max_size=20, unique_by=lambda e: e[0]),
    version=st.sampled_from(["8.6.1", "10.9.0", "10.13.3"]),
    algorithm=st.sampled_from(KNOWN_ALGORITHMS),
)
def test_property_round_trip(entries, version, algorithm):
    cache = CalibrationCache.from_trt_version(version, algorithm, entries)
    data = cache.to_bytes()
    # the bytes are what the reference reader expects, line by line
    header, ref = reference_read(data)
    assert header == f"TRT-{trt_version_number(version)}-{algorithm}"
    assert ref == [(n, bits_of(np.float32(v))) for n, v in entries]
    assert data.count(b"\n") == len(entries) + 1
    back = parse_cache(data)
    assert back.version_number == cache.version_number and back.algorithm == algorithm
    assert cache_bits(back) == cache_bits(cache)
    assert back.to_bytes() == data
