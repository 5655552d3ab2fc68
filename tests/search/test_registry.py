"""The method registry is the one source of method facts: every consumer reads it."""
from __future__ import annotations

import numpy as np
import pytest

from trtkld.cli.main import build_parser
from trtkld.errors import SearchError
from trtkld.report.plots import CANDIDATE_OFFSETS, method_colour
from trtkld.search import DEFAULT_BINS, METHODS, available_methods, run_search
from trtkld.search.auto import AUTO_ORDER
from trtkld.search.registry import (
    auto_candidates,
    check_methods,
    get_method,
    methods_taking,
    options_for_methods,
)


def test_records_are_complete_and_consistent():
    assert available_methods() == ["ppq", "nvidia", "modelopt", "max", "percentile", "mse", "auto"]
    for name, record in METHODS.items():
        assert record.name == name and record.doc and callable(record.search)
        assert DEFAULT_BINS[name] == record.default_bins
        assert record.default_bins % record.bins_multiple == 0
        assert (record.candidate_offset is not None) == record.is_kl
    assert {m for m, r in METHODS.items() if r.is_kl} == {"ppq", "nvidia", "modelopt"}


def test_auto_tries_the_ranked_records_in_the_documented_tie_order():
    assert AUTO_ORDER == ("max", "percentile", "ppq", "nvidia", "modelopt", "mse")
    assert [r.name for r in auto_candidates()] == list(AUTO_ORDER)
    counts = np.random.default_rng(3).integers(0, 50, 4096)
    result = run_search("auto", counts, hist_max=8.0)
    assert set(result.scores) == set(AUTO_ORDER)


def test_report_legend_reads_the_registry():
    assert CANDIDATE_OFFSETS == {"ppq": 0.0, "nvidia": 0.5, "modelopt": 0.0}
    for position, (name, record) in enumerate(METHODS.items()):
        assert method_colour(name, position) == record.colour
    assert len({r.colour for r in METHODS.values()}) == len(METHODS)


@pytest.mark.parametrize("command", ["calibrate", "qdq", "eval", "report"])
def test_cli_help_lists_every_method_and_each_option_once(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in METHODS:
        assert name in text
    assert text.count("--percentile PERCENTILE") == 2   # usage line + option list


def test_options_route_to_the_methods_taking_them_and_are_checked_once():
    assert methods_taking("percentile") == ["percentile", "auto"]
    assert options_for_methods({"percentile": 99.9}) == {
        "percentile": {"percentile": 99.9}, "auto": {"percentile": 99.9}}
    assert options_for_methods({"percentile": None}) == {}
    with pytest.raises(SearchError, match=r"percentile must be in \(0, 100\], found 101"):
        options_for_methods({"percentile": 101.0})
    with pytest.raises(SearchError, match="no search method takes option 'bins'"):
        options_for_methods({"bins": 3})


def test_unknown_names_are_one_clear_error():
    with pytest.raises(SearchError, match=r"unknown method\(s\) \['kl', 'x'\]; choose from ppq"):
        check_methods(["ppq", "kl", "x"])
    with pytest.raises(SearchError, match="tensor 't': unknown search method 'kl'"):
        get_method("kl", where="tensor 't': ")
