"""The one cache + sidecar writer: what it records, and that a refused write leaves no file."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from trtkld.cache import parse_cache
from trtkld.cache.sidecar import metadata_problem, read_metadata, sidecar_path
from trtkld.calibration import tensor_methods, write_calibration_cache
from trtkld.errors import CacheFormatError
from trtkld.search import run_search

COUNTS = np.random.default_rng(5).integers(0, 100, 4096)


def _results():
    auto = run_search("auto", COUNTS, hist_max=6.0, name="a")
    ppq = run_search("ppq", COUNTS, hist_max=6.0, name="b")
    return {"a": auto, "b": ppq}


def test_cache_and_sidecar_agree_and_record_the_method_behind_each_tensor(tmp_path):
    results = _results()
    path = tmp_path / "m.cache"
    written = write_calibration_cache(path, results, method="auto",
                                      options={"percentile": 99.9}, trt_version="8.6.1",
                                      extra={"auto": {"metric": "sqnr"}})
    assert path.read_bytes() == written
    cache = parse_cache(path)
    assert cache.version_number == 8601 and cache.algorithm == "EntropyCalibration2"
    assert [cache.scales[n] for n in results] == [np.float32(r.scale) for r in results.values()]
    meta = read_metadata(path)
    assert meta["sha256"] == hashlib.sha256(written).hexdigest()
    assert meta["method"] == "auto" and meta["options"] == {"percentile": 99.9}
    assert meta["tensor_methods"] == tensor_methods("auto", results)
    assert meta["tensor_methods"]["b"] == "ppq"
    assert meta["tensor_methods"]["a"] == results["a"].chosen_method
    assert meta["auto"] == {"metric": "sqnr"}
    # What a calibrator checks before reusing the cache: it vouches for exactly these bytes.
    assert metadata_problem(meta, cache_file=path, cache_bytes=written, method="auto",
                            options={"percentile": 99.9}, collector="onnxruntime") is None


def test_a_refused_sidecar_field_writes_nothing(tmp_path):
    path = tmp_path / "m.cache"
    with pytest.raises(CacheFormatError, match="sidecar field 'sha256' is written by trtkld"):
        write_calibration_cache(path, _results(), method="auto", trt_version="10.9.0",
                                extra={"sha256": "0" * 64})
    assert not path.exists() and not sidecar_path(path).exists()


def test_unwritable_folder_is_a_cache_error_naming_the_file(tmp_path):
    path = tmp_path / "missing" / "m.cache"
    with pytest.raises(CacheFormatError, match="m.cache"):
        write_calibration_cache(path, _results(), method="auto", trt_version="10.9.0")
