"""`trtkld diff`: run through the real CLI entry point on TensorRT's own caches and edited copies.

The oracle is a plain comparison written here from the real files' text (dict/set arithmetic
and float64 ratios), independent of trtkld.cache.compare.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from trtkld.cache import CalibrationCache, diff_caches, parse_cache, write_cache
from trtkld.cli.main import main


def read_plain(path: Path) -> tuple[str, dict[str, int]]:
    """Header and name -> float32 bits, read with str methods only."""
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = {}
    for line in lines[1:]:
        name, _, hex_text = line.rpartition(": ")
        entries[name] = int(hex_text, 16)
    return lines[0], entries


def as_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def reference_diff(a: dict[str, int], b: dict[str, int]) -> list[tuple[str, float, float]]:
    """(name, ratio, |ln ratio|) for common names, worst first, ties in A's order."""
    rows = []
    for index, (name, bits_a) in enumerate(a.items()):
        if name not in b:
            continue
        bits_b = b[name]
        fa, fb = as_float(bits_a), as_float(bits_b)
        if bits_a == bits_b:
            ratio, dis = 1.0, 0.0
        elif fa > 0 and fb > 0 and math.isfinite(fa) and math.isfinite(fb):
            ratio = fa / fb
            dis = abs(math.log(ratio))
        else:
            ratio, dis = float("nan"), math.inf
        rows.append((index, name, ratio, dis))
    rows.sort(key=lambda r: (-r[3], r[0]))
    return [(name, ratio, dis) for _, name, ratio, dis in rows]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["diff", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def strict_json(text: str):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


@pytest.fixture
def edited(trt_cache_dir, tmp_path):
    """A copy of the DEIMKit cache (TensorRT 10.9.0) with known edits; returns (A, B, edits)."""
    original = parse_cache(trt_cache_dir / "deimkit_trt100900_entropy2.cache")
    names = [n for n, v in original.scales.items() if np.isfinite(v) and v > 0]
    tripled, halved, removed = names[100], names[5], names[7]
    scales = dict(original.scales)
    scales[tripled] = np.float32(scales[tripled] * np.float32(3))
    scales[halved] = np.float32(scales[halved] / np.float32(2))
    del scales[removed]
    scales["added/by/test: 1"] = np.float32(0.5)
    b = CalibrationCache(original.version_number, "MinMaxCalibration", scales)
    path_b = tmp_path / "edited.cache"
    write_cache(b, path_b, allow_nonpositive=True)
    edits = {"tripled": tripled, "halved": halved, "removed": removed}
    return trt_cache_dir / "deimkit_trt100900_entropy2.cache", path_b, edits


def test_identical_fixture_has_no_differences(trt_cache_dir, capsys):
    path = trt_cache_dir / "yolov5_trt8600_entropy2.cache"
    code, out, err = run_cli(capsys, path, path, "--json")
    assert code == 0 and err == ""
    report = strict_json(out)
    assert report["header_differences"] == []
    assert report["only_in_a"] == report["only_in_b"] == []
    assert report["num_common"] == report["num_identical"] == 197
    assert report["max_factor"] == 1.0
    assert len(report["tensors"]) == 197  # --json lists everything by default
    code, out, _ = run_cli(capsys, path, path)
    assert code == 0
    assert "headers identical" in out
    assert "in both: 197 tensors, 197 with identical scales" in out


def test_edited_copy_matches_reference(edited, capsys):
    path_a, path_b, edits = edited
    code, out, err = run_cli(capsys, path_a, path_b, "--json")
    assert code == 0, err
    report = strict_json(out)
    header_a, plain_a = read_plain(path_a)
    header_b, plain_b = read_plain(path_b)
    assert report["a"]["header"] == header_a == "TRT-100900-EntropyCalibration2"
    assert report["b"]["header"] == header_b == "TRT-100900-MinMaxCalibration"
    assert report["header_differences"] == ["algorithm"]
    assert report["only_in_a"] == [edits["removed"]]
    assert report["only_in_b"] == ["added/by/test: 1"]

    expected = reference_diff(plain_a, plain_b)
    assert [t["name"] for t in report["tensors"]] == [name for name, _, _ in expected]
    assert report["tensors"][0]["name"] == edits["tripled"]
    assert report["tensors"][1]["name"] == edits["halved"]
    for row, (name, ratio, dis) in zip(report["tensors"][:2], expected[:2]):
        assert row["ratio"] == ratio and row["abs_log_ratio"] == dis
        assert row["hex_a"] == format(plain_a[name], "x")
        assert row["hex_b"] == format(plain_b[name], "x")
    assert report["tensors"][0]["ratio"] == pytest.approx(1 / 3, rel=1e-6)
    assert report["tensors"][1]["ratio"] == 2.0  # halving a float32 is exact
    assert all(t["identical"] for t in report["tensors"][2:])
    assert report["num_identical"] == len(plain_a) - 1 - 2
    assert report["max_factor"] == pytest.approx(3.0, rel=1e-6)


def test_text_output_and_top(edited, capsys):
    path_a, path_b, edits = edited
    code, out, _ = run_cli(capsys, path_a, path_b, "--top", "2")
    assert code == 0
    assert "header differs: algorithm EntropyCalibration2 vs MinMaxCalibration" in out
    assert "only in A: 1 tensors" in out and f"  {edits['removed']}" in out
    assert "only in B: 1 tensors" in out and "  added/by/test: 1" in out
    assert "most different 2 of 1906" in out
    table = out.split("(|ln(A/B)| descending):\n", 1)[1].splitlines()
    assert len(table) == 3  # column titles + 2 rows
    assert table[1].endswith(edits["tripled"]) and table[2].endswith(edits["halved"])
    assert table[2].split()[0] == "2"  # ratio column
    code, out, _ = run_cli(capsys, path_a, path_b, "--json", "--top", "1")
    assert [t["name"] for t in strict_json(out)["tensors"]] == [edits["tripled"]]


def test_fail_above_and_fail_on_missing(edited, capsys):
    path_a, path_b, _ = edited
    assert run_cli(capsys, path_a, path_b, "--fail-above", "3.1")[0] == 0
    code, _, err = run_cli(capsys, path_a, path_b, "--fail-above", "2.9")
    assert code == 1 and "> --fail-above 2.9" in err
    code, _, err = run_cli(capsys, path_a, path_b, "--fail-on-missing")
    assert code == 1 and "1 tensors only in A, 1 only in B" in err
    same = path_a
    assert run_cli(capsys, same, same, "--fail-on-missing", "--fail-above", "1")[0] == 0


def test_two_different_models(trt_cache_dir, capsys):
    path_a = trt_cache_dir / "deimkit_trt100900_entropy2.cache"
    path_b = trt_cache_dir / "mpnet_trt101303_minmax.cache"
    code, out, _ = run_cli(capsys, path_a, path_b, "--json")
    assert code == 0
    report = strict_json(out)
    _, plain_a = read_plain(path_a)
    _, plain_b = read_plain(path_b)
    assert report["header_differences"] == ["version", "algorithm"]
    assert report["b"]["trt_version"] == "10.13.3" and report["a"]["trt_version"] == "10.9.0"
    assert report["only_in_a"] == [n for n in plain_a if n not in plain_b]
    assert report["only_in_b"] == [n for n in plain_b if n not in plain_a]
    expected = reference_diff(plain_a, plain_b)
    assert report["num_common"] == len(expected) == len(set(plain_a) & set(plain_b))
    assert [t["name"] for t in report["tensors"]] == [name for name, _, _ in expected]
    # a zero scale on one side only: worst possible, encoded as a JSON string
    worst = report["tensors"][0]
    assert worst["abs_log_ratio"] == "inf" and worst["hex_a"] == "0"
    assert report["max_factor"] == "inf"
    code, out, _ = run_cli(capsys, path_a, path_b)
    assert "header differs: TensorRT version 10.9.0 vs 10.13.3; algorithm " \
           "EntropyCalibration2 vs MinMaxCalibration" in out
    assert f"... and {len(report['only_in_a']) - 20} more" in out


def test_geometric_mean_shows_a_systematic_bias(trt_cache_dir):
    a = parse_cache(trt_cache_dir / "yolov5_trt8600_entropy2.cache")
    # the same amax written with a T/128 instead of an amax/127 rule
    b = CalibrationCache(a.version_number, a.algorithm,
                         {n: np.float32(v * np.float32(127) / np.float32(128))
                          for n, v in a.scales.items()})
    diff = diff_caches(a, b)
    logs = [math.log(float(a.scales[n]) / float(b.scales[n])) for n in a.scales]
    assert diff.geometric_mean_ratio() == pytest.approx(math.exp(math.fsum(logs) / len(logs)),
                                                        rel=1e-12)
    assert diff.geometric_mean_ratio() == pytest.approx(128 / 127, rel=1e-6)


def test_special_values_compare_by_bits():
    nan = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)[0]
    a = CalibrationCache(100900, "EntropyCalibration2",
                         {"z": 0.0, "i": np.inf, "n": nan, "p": 1.0, "neg": -1.0, "q": 0.0})
    b = CalibrationCache(100900, "EntropyCalibration2",
                         {"z": 0.0, "i": np.inf, "n": nan, "p": 2.0, "neg": 1.0, "q": 1.0})
    diff = diff_caches(a, b)
    by_name = {d.name: d for d in diff.common}
    assert [by_name[n].disagreement for n in ("z", "i", "n")] == [0.0, 0.0, 0.0]
    assert by_name["p"].disagreement == pytest.approx(math.log(2))
    assert [d.name for d in diff.common] == ["neg", "q", "p", "z", "i", "n"]
    assert math.isinf(diff.max_factor)


def test_errors_exit_2_with_file_and_line(trt_cache_dir, tmp_path, capsys):
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-100900-EntropyCalibration2\nx 3c010204\n")
    good = trt_cache_dir / "yolov5_trt8600_entropy2.cache"
    code, out, err = run_cli(capsys, good, bad)
    assert code == 2 and out == ""
    assert f"{bad}, line 2" in err and "x 3c010204" in err
    code, _, err = run_cli(capsys, good, tmp_path / "missing.cache")
    assert code == 2 and "missing.cache" in err
    code, _, err = run_cli(capsys, good, good, "--fail-above", "0.5")
    assert code == 2 and "--fail-above" in err
    code, _, err = run_cli(capsys, good, good, "--top", "-1")
    assert code == 2 and "--top" in err


def test_unknown_algorithm_is_a_warning(trt_cache_dir, tmp_path, capsys):
    legacy = tmp_path / "legacy.cache"
    legacy.write_text("TRT-8600-LegacyCalibration\nimages: 3c00f9f4\n")
    code, out, err = run_cli(capsys, trt_cache_dir / "yolov5_trt8600_entropy2.cache", legacy)
    assert code == 0
    assert "warning:" in err and "LegacyCalibration" in err
    assert "only in A: 196 tensors" in out and "in both: 1 tensors, 1 with identical" in out


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["diff", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "trtkld diff ours.cache tensorrt.cache --json" in out
    for option in ("--top", "--json", "--fail-above", "--fail-on-missing"):
        assert option in out
