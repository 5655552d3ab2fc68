"""The shared option groups and the one exit-status convention of every sub-command."""
from __future__ import annotations

import argparse

import pytest

from trtkld.cache import DEFAULT_TRT_VERSION
from trtkld.cli import main as cli_main
from trtkld.cli.args import (
    EXIT_INTERRUPTED,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    DataArgs,
    MethodArgs,
    ModelArgs,
    RefineArgs,
)
from trtkld.cli.main import COMMAND_MODULES, build_parser, main

COMMANDS = [m.rsplit(".", 1)[1] for m in COMMAND_MODULES]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_states_the_exit_statuses(command, capsys):
    out = _help(command, capsys)
    assert EXIT_STATUS_HELP in out


def test_default_trt_version_in_help_comes_from_the_cache_module(capsys, monkeypatch):
    monkeypatch.setattr("trtkld.cache.DEFAULT_TRT_VERSION", "9.8.7")
    out = " ".join(_help("calibrate", capsys).split())
    assert "9.8.7" in out and DEFAULT_TRT_VERSION not in out
    for command in COMMANDS:             # no other command states a default TensorRT version
        assert DEFAULT_TRT_VERSION not in _help(command, capsys)


def test_refine_flags_are_the_same_in_calibrate_and_eval(capsys):
    parsers = build_parser()._subparsers._group_actions[0].choices
    for command in ("calibrate", "eval"):
        flags = {o for a in parsers[command]._actions for o in a.option_strings}
        assert {"--refine", "--refine-tensors", "--refine-sweeps"} <= flags
        tensors = next(a for a in parsers[command]._actions
                       if "--refine-tensors" in a.option_strings)
        assert tensors.default == 16 and tensors.type is int


def test_groups_parse_into_options(tmp_path):
    parser = argparse.ArgumentParser()
    model, data, methods = ModelArgs(), DataArgs(), MethodArgs("ppq")
    for group in (model, data, methods, RefineArgs("refine")):
        group.add_to(parser)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    args = parser.parse_args([str(onnx_file), "--data", "d/", "-m", "ppq,max", "-m", "ppq",
                              "--percentile", "99.5", "--preset", "caffe", "--resize", "32x48"])
    assert model.parse(args).path == str(onnx_file)
    assert data.source(args, model.parse(args)) == "d/"
    assert methods.parse(args) == ["ppq", "max"]
    assert methods.method_options(args) == {"percentile": {"percentile": 99.5},
                                            "auto": {"percentile": 99.5}}
    pre = data.preprocess(args)
    assert pre.resize == (32, 48)
    assert RefineArgs.parse(args) is None


@pytest.mark.parametrize("argv, status, message", [
    (["calibrate", "m.onnx", "--data", "d", "--method", "kl"], EXIT_USAGE, "unknown method(s)"),
    (["calibrate", "--demo", "--percentile", "101", "-m", "percentile"], EXIT_USAGE,
     "percentile must be in (0, 100], found 101"),
    (["qdq", "missing.onnx", "--cache", "x.cache"], EXIT_USAGE, "does not exist"),
    (["calibrate", "missing.onnx", "--data", "d"], EXIT_USAGE, "does not exist"),
    (["eval", "--demo", "--model-preset", "nsfw"], EXIT_USAGE, "contradict each other"),
    (["build", "--demo", "--method", "ppq,nvidia"], EXIT_USAGE, "give one method"),
])
def test_usage_and_input_errors_exit_2_with_one_line(argv, status, message, capsys, monkeypatch):
    monkeypatch.setattr("trtkld.trt.require_calibrator_api", lambda: None, raising=False)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    parser = build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: _with_func(parser, interrupted))
    assert main(["diff", "a", "b"]) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


def _with_func(parser, func):
    parser._subparsers._group_actions[0].choices["diff"].set_defaults(func=func)
    return parser
