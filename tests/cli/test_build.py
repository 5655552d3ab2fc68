"""`trtkld build` writes the engine with the plain atomic writer: a failure is an OutputError."""
from __future__ import annotations

import pytest

from trtkld.cli.build import _write_engine
from trtkld.errors import CacheFormatError, OutputError


def test_engine_write_failure_is_an_output_error_not_a_cache_error(tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "model.plan"
    with pytest.raises(OutputError, match="cannot write engine .*model.plan") as info:
        _write_engine(target, b"plan")
    assert not isinstance(info.value, CacheFormatError)


def test_engine_is_written_whole(tmp_path):
    target = tmp_path / "model.plan"
    target.write_bytes(b"old")
    _write_engine(target, memoryview(b"\x00new plan"))
    assert target.read_bytes() == b"\x00new plan"
    assert [p.name for p in tmp_path.iterdir()] == ["model.plan"]
