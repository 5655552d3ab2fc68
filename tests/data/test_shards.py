"""Cutting file-backed data into contiguous shards that batch exactly as the whole data does.

The oracle: the batches of the shards, concatenated, equal the whole data's batches (sources
and array contents), including padding of a fixed batch dim, dropping, and shape changes.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trtkld.data import InputSpec, PreprocessOptions, input_specs_from_onnx, open_data
from trtkld.data.shards import plan_shards
from trtkld.demo import DEMO_PREPROCESS
from trtkld.errors import DataError


@pytest.fixture(scope="module")
def six_images(demo_calib_dir, tmp_path_factory) -> Path:
    """The first six demo calibration images, in their own folder."""
    folder = tmp_path_factory.mktemp("six")
    for path in _images(demo_calib_dir)[:6]:
        shutil.copy(path, folder / path.name)
    return folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def _demo_data(model, folder, batch_size=2):
    options = dict(DEMO_PREPROCESS)
    preprocess = PreprocessOptions.preset(options.pop("preset"), **options)
    return open_data(str(folder), input_specs_from_onnx(model), batch_size=batch_size,
                     preprocess=preprocess)


def _batches(data):
    return [(b.sources, {k: v.copy() for k, v in b.inputs.items()}) for b in data]


def _assert_same_batches(whole, parts):
    expected = _batches(whole)
    found = [b for part in parts for b in _batches(part)]
    assert [s for s, _ in found] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(found, expected):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k])


def test_plan_shards_contiguous_balanced_and_capped(demo_model, six_images):
    data = _demo_data(demo_model, six_images, batch_size=2)             # 3 batches of 2
    files = [os.path.join(str(six_images), p.name) for p in _images(six_images)]
    for n, sizes in [(1, [6]), (2, [2, 4]), (3, [2, 2, 2]), (5, [2, 2, 2])]:
        shards = plan_shards(data, n)
        assert [len(s.paths) for s in shards] == sizes
        assert [p for s in shards for p in s.paths] == files
        assert [s.index for s in shards] == list(range(len(shards)))
        assert sum(s.num_batches for s in shards) == len(data)
        _assert_same_batches(data, [s.data for s in shards])
    assert "files 2-5" in plan_shards(data, 2)[1].describe()


def _npy_folder(tmp_path, rows_per_file, shape=(3, 4, 4)):
    folder = tmp_path / "npy"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, rows in enumerate(rows_per_file):
        sample_shape = shape if not isinstance(rows, tuple) else rows[1]
        count = rows if not isinstance(rows, tuple) else rows[0]
        np.save(folder / f"part{i:02d}.npy",
                rng.normal(size=(count, *sample_shape)).astype(np.float32))
    return folder


def test_plan_shards_cuts_only_where_a_file_and_a_batch_start(tmp_path):
    # files of 3 samples, batches of 2: file starts 0,3,6,9 / batch starts 0,2,4,...;
    # shards may only start at sample 0 or 6
    folder = _npy_folder(tmp_path, [3, 3, 3, 3])
    spec = [InputSpec("x", (None, 3, 4, 4), np.dtype(np.float32))]
    data = open_data(str(folder), spec, batch_size=2)
    shards = plan_shards(data, 4)
    assert [s.first_file for s in shards] == [0, 2]
    assert [s.num_samples for s in shards] == [6, 6]
    _assert_same_batches(data, [s.data for s in shards])


@pytest.mark.parametrize("last_batch", ["pad", "drop"])
def test_plan_shards_fixed_batch_and_shape_changes(tmp_path, last_batch):
    # fixed batch 2, dynamic H/W: shape changes close short groups, which are padded (or
    # dropped) exactly as in the whole data
    shapes = [(1, (3, 4, 4)), (1, (3, 4, 4)), (1, (3, 4, 4)), (2, (3, 5, 5)), (1, (3, 4, 4)),
              (1, (3, 4, 4)), (3, (3, 6, 6))]
    folder = _npy_folder(tmp_path, shapes)
    spec = [InputSpec("x", (2, 3, "h", "w"), np.dtype(np.float32))]
    data = open_data(str(folder), spec, last_batch=last_batch)
    for n in (1, 2, 3, 4, 9):
        shards = plan_shards(data, n)
        assert all(s.num_batches >= 1 for s in shards)
        assert [p for s in shards for p in s.paths] == data.source.paths
        _assert_same_batches(data, [s.data for s in shards])


def test_plan_shards_rejects_loaders_and_bad_counts(demo_model, six_images):
    spec = [InputSpec("x", (None, 3), np.dtype(np.float32))]
    loader = open_data(lambda: [{"x": np.ones((2, 3), np.float32)}], spec)
    with pytest.raises(DataError, match="only data read from files"):
        plan_shards(loader, 2)
    with pytest.raises(DataError, match="positive integer"):
        plan_shards(_demo_data(demo_model, six_images), 0)


def test_shards_name_their_files_by_absolute_paths(demo_model, six_images, monkeypatch,
                                                   tmp_path):
    # a worker's working directory is not the driver's: relative --data paths must not leak
    monkeypatch.chdir(six_images.parent)
    data = _demo_data(demo_model, six_images.name, batch_size=2)
    assert not os.path.isabs(data.source.paths[0])
    shards = plan_shards(data, 2)
    monkeypatch.chdir(tmp_path)                      # elsewhere, the shards still read
    for shard in shards:
        assert all(os.path.isabs(p) for p in shard.paths)
        assert list(shard.paths) == shard.data.source.paths
        assert sum(b.size for b in shard.data) == shard.num_samples
    assert [os.path.relpath(p, six_images.parent) for s in shards for p in s.paths] == \
        data.source.paths
