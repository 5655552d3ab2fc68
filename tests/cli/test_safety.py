"""Issue 11 on the command line: no run loses a user's file, hangs, runs away or prints a
traceback on bad input.

Runs in-process (``main(argv)``) where possible; signals, pipes and FIFOs run in a subprocess
with a timeout (and a memory cap) so a hang or a runaway read fails the test instead of the
machine. Real model: the demo PP-LCNet on two real images (scikit-image samples).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from trtkld.cache import parse_cache
from trtkld.cli.main import build_parser, main
from trtkld.demo import DEMO_CALIB_DIR, demo_model_path
from trtkld.histogram import HistogramSet

REPO = Path(__file__).resolve().parents[2]
TRT_CACHES = REPO / "tests" / "fixtures" / "trt_caches"


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A copy of the demo model, two calibration images, a cache and histograms made once."""
    root = tmp_path_factory.mktemp("safety")
    model = root / "m.onnx"
    shutil.copyfile(demo_model_path(), model)
    data = root / "d"
    data.mkdir()
    for name in ("camera.jpg", "coins.jpg"):
        shutil.copyfile(DEMO_CALIB_DIR / name, data / name)
    cache, hists = root / "c.cache", root / "h.npz"
    assert main(["calibrate", str(model), "--data", str(data), "--out", str(cache),
                 "--save-histograms", str(hists), "-q", "--table", "none",
                 "--trt-version", "10.9.0"]) == 0
    return {"root": root, "model": model, "data": data, "cache": cache, "hists": hists}


@pytest.fixture
def env(base, tmp_path):
    """Fresh copies per test, so a test that destroys a file cannot affect another."""
    out = {}
    for key in ("model", "cache", "hists"):
        out[key] = tmp_path / base[key].name
        shutil.copyfile(base[key], out[key])
    out["data"] = tmp_path / "d"
    shutil.copytree(base["data"], out["data"])
    out["root"] = tmp_path
    return out


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ outputs overwriting inputs
def _overwrite_cases(e):
    m, d, c, h, r = e["model"], e["data"], e["cache"], e["hists"], e["root"]
    image = d / "camera.jpg"
    x_cache = r / "x.cache"
    shutil.copyfile(m, x_cache)
    return {
        "calibrate --out MODEL": (["calibrate", m, "--data", d, "--out", m], m),
        "calibrate --save-histograms MODEL": (
            ["calibrate", m, "--data", d, "--out", r / "o.cache", "--save-histograms", m], m),
        "calibrate --out IMAGE": (["calibrate", m, "--data", d, "--out", image], image),
        "calibrate --out FROM-HISTOGRAMS": (
            ["calibrate", "--from-histograms", h, "--out", h], h),
        "calibrate --out == --save-histograms": (
            ["calibrate", m, "--data", d, "--out", r / "same", "--save-histograms", r / "same"],
            None),
        "calibrate default output of x.cache": (["calibrate", x_cache, "--data", d], x_cache),
        "calibrate --out via a symlink to MODEL": (
            ["calibrate", m, "--data", d, "--out", _symlink(r / "link.cache", m)], m),
        "qdq -o MODEL": (["qdq", m, "--cache", c, "-o", m], m),
        "qdq -o CACHE": (["qdq", m, "--cache", c, "-o", c], c),
        "eval --json MODEL": (
            ["eval", m, "--data", d, "--eval-data", d / "camera.jpg", "--method", "max",
             "--peers", "none", "--json", m], m),
        "report --save-histograms MODEL": (
            ["report", m, "--data", d, "--method", "max", "--out", r / "rep",
             "--save-histograms", m], m),
        "build --engine MODEL": (["build", m, "--cache", c, "--engine", m], m),
        "build --cache MODEL": (["build", m, "--cache", m, "--engine", r / "e.plan"], m),
    }


def _symlink(link: Path, target: Path) -> Path:
    os.symlink(target, link)
    return link


CASES = [
    "calibrate --out MODEL", "calibrate --save-histograms MODEL", "calibrate --out IMAGE",
    "calibrate --out FROM-HISTOGRAMS", "calibrate --out == --save-histograms",
    "calibrate default output of x.cache", "calibrate --out via a symlink to MODEL",
    "qdq -o MODEL", "qdq -o CACHE", "eval --json MODEL", "report --save-histograms MODEL",
    "build --engine MODEL", "build --cache MODEL",
]


@pytest.mark.parametrize("case", CASES)
def test_an_output_never_overwrites_an_input(env, capsys, case):
    argv, victim = _overwrite_cases(env)[case]
    before = {p: _sha(p) for p in env["root"].rglob("*") if p.is_file()}
    started = time.perf_counter()
    rc, out, err = _run(argv, capsys)
    assert rc == 2, (out, err)
    line = _error_line(err)
    assert ("would destroy an input" in line or "are the same file" in line), line
    if victim is not None:
        assert str(victim) in line or victim.name in line
    # nothing changed, nothing new: the check ran before any work
    after = {p: _sha(p) for p in env["root"].rglob("*") if p.is_file()}
    assert after == before
    assert time.perf_counter() - started < 30


def test_output_folder_must_exist_before_any_collection(env, capsys):
    rc, _, err = _run(["calibrate", env["model"], "--data", env["data"], "--out",
                       env["root"] / "missing" / "o.cache", "-q"], capsys)
    assert rc == 2 and "does not exist" in _error_line(err)


def test_overwriting_a_previous_output_is_allowed(env, capsys):
    out = env["root"] / "again.cache"
    argv = ["calibrate", env["model"], "--data", env["data"], "--out", out, "-q",
            "--table", "none", "--trt-version", "10.9.0"]
    assert _run(argv, capsys)[0] == 0
    first = out.read_bytes()
    assert _run(argv, capsys)[0] == 0
    assert out.read_bytes() == first  # deterministic, and replaced in place


# ------------------------------------------------------------------ writers
def test_qdq_never_follows_a_symlink_at_a_temporary_name(env, capsys):
    victim = env["root"] / "precious.txt"
    victim.write_text("user data")
    out = env["root"] / "m.int8.onnx"
    # the fixed temporary name the writer used to open with O_TRUNC, following links
    os.symlink(victim, env["root"] / "m.int8.onnx.tmp")
    rc, _, err = _run(["qdq", env["model"], "--cache", env["cache"], "-o", out], capsys)
    assert rc == 0, err
    assert victim.read_text() == "user data"
    assert out.stat().st_size > 1000 and not out.is_symlink()
    leftovers = [p.name for p in env["root"].iterdir() if p.name.endswith(".tmp")
                 and p.name != "m.int8.onnx.tmp"]
    assert leftovers == []


def _pair_is_consistent(cache: Path) -> dict:
    meta = json.loads((cache.parent / (cache.name + ".trtkld.json")).read_text())
    assert meta["sha256"] == _sha(cache)
    return meta


def test_concurrent_writers_to_one_out_leave_one_runs_cache_and_sidecar(env, monkeypatch):
    """Run B starts while run A sits between writing its cache and its sidecar: the pair on
    disk must be one run's (cache bytes and the sidecar's options agree)."""
    out = env["root"] / "shared.cache"
    argv = {p: ["calibrate", "--from-histograms", str(env["hists"]), "--method", "percentile",
                "--percentile", p, "--out", str(out), "-q", "--table", "none",
                "--trt-version", "10.9.0"] for p in ("99.0", "99.99")}
    expected = {}
    for p, args in argv.items():  # each run alone, for reference bytes
        assert main(args) == 0
        expected[p] = out.read_bytes()
    assert expected["99.0"] != expected["99.99"]
    out.unlink()

    real_replace = os.replace
    state = {"started": False}
    results = {}

    def run_b():
        results["b"] = main(argv["99.99"])

    def replace_then_let_b_run(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        if (str(dst) == str(out) and not state["started"]
                and threading.current_thread() is threading.main_thread()):
            state["started"] = True
            b = threading.Thread(target=run_b)
            b.start()
            b.join(timeout=10)  # B runs to the end unless A holds the pair's lock
            state["thread"] = b

    monkeypatch.setattr(os, "replace", replace_then_let_b_run)
    assert main(argv["99.0"]) == 0
    state["thread"].join(timeout=60)
    assert results.get("b") == 0
    meta = _pair_is_consistent(out)
    percentile = meta["options"]["percentile"]
    assert out.read_bytes() == expected[f"{percentile}"], "cache of one run, sidecar of another"


def test_concurrent_processes_writing_one_out_leave_a_consistent_pair(env):
    out = env["root"] / "race.cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trtkld.cli.main", "calibrate", "--from-histograms",
             str(env["hists"]), "--method", "percentile", "--percentile", p, "--out", str(out),
             "-q", "--table", "none", "--trt-version", "10.9.0"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for p in ("99.0", "99.9", "99.99", "99.0", "99.9", "99.99")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    meta = _pair_is_consistent(out)
    assert parse_cache(out).scales  # a complete cache
    assert meta["options"]["percentile"] in (99.0, 99.9, 99.99)
    assert not [p for p in env["root"].iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ report folders
def test_report_refuses_a_non_empty_folder_that_is_not_a_report(env, capsys):
    out = env["root"] / "figures"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "mine.png").write_bytes(b"a user's figure")
    rc, _, err = _run(["report", "--histograms", env["hists"], "--method", "max", "--out", out,
                       "--max-plots", "1"], capsys)
    assert rc == 2 and "not a trtkld report" in _error_line(err)
    assert (out / "plots" / "mine.png").read_bytes() == b"a user's figure"
    assert sorted(p.name for p in out.rglob("*")) == ["mine.png", "plots"]


def test_report_rewrites_only_its_own_files(env, capsys):
    out = env["root"] / "rep"
    argv = ["report", "--histograms", env["hists"], "--method", "max,ppq", "--out", out]
    assert _run(argv + ["--max-plots", "3"], capsys)[0] == 0
    (out / "plots" / "mine.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    assert _run(argv + ["--max-plots", "1"], capsys)[0] == 0
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert len(plots) == 2 and "mine.png" in plots
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ unbounded reads
def _limited_run(argv, *, timeout=60, memory=3 * 2**30):
    """The CLI in a subprocess with a timeout and an address-space cap (a runaway read fails
    with MemoryError instead of taking the machine)."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "trtkld.cli.main", *map(str, argv)], cwd=REPO,
            capture_output=True, text=True, timeout=timeout, preexec_fn=cap,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"trtkld {' '.join(map(str, argv))} hung (> {timeout} s)")
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_diff_reads_only_regular_files(env, kind):
    if kind == "dev-zero":
        other = Path("/dev/zero")
        if not other.exists():
            pytest.skip("no /dev/zero on this system")
    elif kind == "fifo":
        other = env["root"] / "pipe.cache"
        os.mkfifo(other)
    else:
        other = env["root"] / "dir.cache"
        other.mkdir()
    rc, _, err = _limited_run(["diff", env["cache"], other], timeout=30)
    assert rc == 2, err
    line = _error_line(err)
    assert str(other) in line and "regular file" in line


def test_a_fifo_in_the_data_folder_is_refused_not_waited_on(env):
    os.mkfifo(env["data"] / "stream.jpg")
    rc, _, err = _limited_run(["calibrate", env["model"], "--data", env["data"], "--out",
                               env["root"] / "o.cache", "-q"], timeout=60)
    assert rc == 2, err
    line = _error_line(err)
    assert "stream.jpg" in line and "FIFO" in line
    assert not (env["root"] / "o.cache").exists()


def test_a_cache_over_the_size_limit_is_refused(env, monkeypatch, capsys):
    import trtkld.cache.format as fmt

    big = env["root"] / "big.cache"
    big.write_bytes(env["cache"].read_bytes() * 4)
    monkeypatch.setattr(fmt, "MAX_CACHE_BYTES", env["cache"].stat().st_size * 2)
    rc, _, err = _run(["diff", env["cache"], big], capsys)
    assert rc == 2 and "limit" in _error_line(err)


# ------------------------------------------------------------------ images
def test_a_decompression_bomb_is_a_clear_error(env, monkeypatch, capsys):
    from PIL import Image

    # the images have over 100000 pixels: more than twice this limit, where Pillow raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    rc, _, err = _run(["calibrate", env["model"], "--data", env["data"], "--out",
                       env["root"] / "o.cache", "-q"], capsys)
    assert rc == 2
    line = _error_line(err)
    assert "too large" in line and ".jpg" in line


@pytest.mark.parametrize("option", [["--crop", "100000"], ["--resize", "100000"],
                                    ["--resize", "20000x300"], ["--crop", "0"]])
def test_absurd_crop_and_resize_are_refused_at_parse_time(option, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["calibrate", "m.onnx", "--data", "d", *option])
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err


# ------------------------------------------------------------------ data loaders
LOADERS = '''
import itertools, sys
import numpy as np

def forever():
    for i in itertools.count():
        yield {"x": np.full((3, 224, 224), (i % 7) / 7, np.float32)}

def exits():
    sys.exit(0)
    yield

def slow():
    open(MARKER, "w").close()
    for i in itertools.count():
        import time; time.sleep(0.2)
        yield {"x": np.full((3, 224, 224), (i % 7) / 7, np.float32)}
'''


def _loaders(folder: Path, name="loaders_mod") -> Path:
    path = folder / f"{name}.py"
    path.write_text(f"MARKER = {str(folder / 'started')!r}\n" + LOADERS)
    return path


def test_max_samples_stops_an_infinite_loader(env, capsys):
    script = _loaders(env["root"])
    out = env["root"] / "o.cache"
    rc, _, err = _run(["calibrate", env["model"], "--data-loader", f"{script}:forever",
                       "--max-samples", "5", "--out", out, "-q", "--table", "none"], capsys)
    assert rc == 0, err
    meta = json.loads(Path(str(out) + ".trtkld.json").read_text())
    assert meta["data"]["num_samples"] == 5


def test_an_infinite_loader_stops_at_the_default_cap_with_a_warning(env, monkeypatch, capsys,
                                                                    caplog):
    import trtkld.data.dataset as dataset

    monkeypatch.setattr(dataset, "DEFAULT_LOADER_SAMPLE_CAP", 12)
    script = _loaders(env["root"])
    out = env["root"] / "o.cache"
    rc, _, err = _run(["calibrate", env["model"], "--data-loader", f"{script}:forever",
                       "--out", out, "-q", "--table", "none"], capsys)
    assert rc == 0, err
    assert "stopped after 12 samples" in caplog.text and "--max-samples" in caplog.text
    assert json.loads(Path(str(out) + ".trtkld.json").read_text())["data"]["num_samples"] == 12


def test_a_loader_calling_sys_exit_is_an_error_not_success(env, capsys):
    script = _loaders(env["root"])
    out = env["root"] / "o.cache"
    rc, _, err = _run(["calibrate", env["model"], "--data-loader", f"{script}:exits",
                       "--out", out, "-q"], capsys)
    assert rc == 2
    assert "sys.exit(0)" in _error_line(err)
    assert not out.exists()


def test_module_function_finds_a_module_in_the_current_folder(env, monkeypatch, capsys):
    _loaders(env["root"], name="my_calib_loader")
    monkeypatch.chdir(env["root"])
    monkeypatch.delitem(sys.modules, "my_calib_loader", raising=False)
    rc, _, err = _run(["calibrate", env["model"], "--data-loader", "my_calib_loader:forever",
                       "--max-samples", "3", "--out", "o.cache", "-q", "--table", "none"],
                      capsys)
    assert rc == 0, err
    assert (env["root"] / "o.cache").is_file()


# ------------------------------------------------------------------ signals and pipes
def test_sigint_prints_one_line_exits_130_and_leaves_nothing_half_written(env):
    script = _loaders(env["root"])
    out = env["root"] / "o.cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtkld.cli.main", "calibrate", str(env["model"]),
         "--data-loader", f"{script}:slow", "--max-samples", "1000", "--out", str(out), "-q",
         "--trt-version", "10.9.0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.time() + 60
        while not (env["root"] / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the loader never started"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert "interrupted" in err
    assert not out.exists()
    assert not [p for p in env["root"].iterdir() if p.name.endswith(".tmp")]


def test_a_closed_stdout_costs_no_output_and_no_traceback(env):
    template = env["root"] / "o.{method}.cache"
    cmd = (f"{sys.executable} -m trtkld.cli.main calibrate {env['model']} --data {env['data']} "
           f"-m ppq,nvidia,max --out '{template}' -q --table full | head -1")
    proc = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    for method in ("ppq", "nvidia", "max"):
        cache = Path(str(template).replace("{method}", method))
        assert parse_cache(cache).scales, method
        _pair_is_consistent(cache)


# ------------------------------------------------------------------ options at parse time
BAD_OPTIONS = {
    "percentile 0": (["--percentile", "0"], "--percentile"),
    "percentile 101": (["--percentile", "101"], "--percentile"),
    "percentile nan": (["--percentile", "nan"], "--percentile"),
    "memory budget -1": (["--memory-budget-mb", "-1"], "--memory-budget-mb"),
    "memory budget nan": (["--memory-budget-mb", "nan"], "--memory-budget-mb"),
    "memory budget inf": (["--memory-budget-mb", "inf"], "--memory-budget-mb"),
    "guard clipped -0.5": (["--guard-clipped", "-0.5"], "--guard-clipped"),
    "guard sqnr nan": (["--guard-sqnr-drop", "nan"], "--guard-sqnr-drop"),
    "dtype notatype": (["--dtype", "notatype"], "--dtype"),
    "trt version 99999.0.0": (["--trt-version", "99999.0.0"], "--trt-version"),
    "trt version 20 digits": (["--trt-version", "12345678901234567890"], "--trt-version"),
    "max-samples 0": (["--max-samples", "0"], "--max-samples"),
    "batch size -3": (["--batch-size", "-3"], "--batch-size"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_values_are_usage_errors_before_any_work(case, capsys):
    option, name = BAD_OPTIONS[case]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["calibrate", "m.onnx", "--data", "d", *option])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and "Traceback" not in err  # a value error, not unknown


@pytest.mark.parametrize("version", ["11.0.0", "7.2.1"])
def test_trt_version_without_calibrators_warns(version, caplog):
    args = build_parser().parse_args(["calibrate", "m.onnx", "--trt-version", version])
    assert args.trt_version == version
    assert "no TensorRT release with calibrators" in caplog.text


def test_percentile_option_of_qdq_and_eval_is_checked_too(capsys):
    for command in ("qdq", "eval", "report"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "m.onnx", "--percentile", "0"])
        assert "--percentile" in capsys.readouterr().err


# ------------------------------------------------------------------ histogram files
def test_an_empty_histogram_file_writes_no_cache(env, capsys):
    empty = env["root"] / "empty.npz"
    HistogramSet().save(empty)
    out = env["root"] / "o.cache"
    rc, _, err = _run(["calibrate", "--from-histograms", empty, "--out", out], capsys)
    assert rc == 2 and "holds no tensors" in _error_line(err)
    assert not out.exists()


def test_inconsistent_num_values_is_refused(env, capsys):
    with np.load(env["hists"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["num_values"] = arrays["num_values"] + 5
    bad = env["root"] / "bad.npz"
    np.savez(bad, **arrays)
    rc, _, err = _run(["calibrate", "--from-histograms", bad, "--out", env["root"] / "o.cache"],
                      capsys)
    assert rc == 2 and "num_values" in _error_line(err)


@pytest.mark.parametrize("extra", [["MODEL"], ["--data", "DATA"], ["--demo"]])
def test_from_histograms_refuses_a_model_or_data_it_would_ignore(env, capsys, extra):
    extra = [str(env["model"]) if e == "MODEL" else str(env["data"]) if e == "DATA" else e
             for e in extra]
    rc, _, err = _run(["calibrate", *extra, "--from-histograms", env["hists"], "--out",
                       env["root"] / "o.cache"], capsys)
    assert rc == 2 and "--from-histograms searches saved histograms" in _error_line(err)


def test_merging_shards_without_shared_ranges_points_at_ranges_from(env, capsys):
    other_data = env["root"] / "d2"
    other_data.mkdir()
    shutil.copyfile(DEMO_CALIB_DIR / "astronaut.jpg", other_data / "astronaut.jpg")
    second = env["root"] / "h2.npz"
    assert _run(["calibrate", env["model"], "--data", other_data, "--out",
                 env["root"] / "b.cache", "--save-histograms", second, "-q", "--table", "none"],
                capsys)[0] == 0
    rc, _, err = _run(["calibrate", "--from-histograms", env["hists"], second, "--out",
                       env["root"] / "o.cache"], capsys)
    assert rc == 2 and "--ranges-from" in _error_line(err)
    # the README's recipe: the second shard with the first one's ranges merges
    third = env["root"] / "h3.npz"
    assert _run(["calibrate", env["model"], "--data", other_data, "--ranges-from",
                 env["hists"], "--out", env["root"] / "c3.cache", "--save-histograms", third,
                 "-q", "--table", "none"], capsys)[0] == 0
    assert _run(["calibrate", "--from-histograms", env["hists"], third, "--out",
                 env["root"] / "merged.cache", "--table", "none"], capsys)[0] == 0


# ------------------------------------------------------------------ qdq with another cache
def test_qdq_refuses_another_models_cache_and_lists_names(env, capsys):
    other = TRT_CACHES / "yolov5_trt8600_entropy2.cache"
    out = env["root"] / "q.onnx"
    rc, _, err = _run(["qdq", env["model"], "--cache", other, "-o", out], capsys)
    assert rc == 2
    line = _error_line(err)
    assert "another model's cache" in line
    some = list(parse_cache(other).scales)[:3]
    assert all(repr(n) in line for n in some)
    assert not out.exists()


# ------------------------------------------------------------------ quiet by default
def _shown_lines(caplog) -> list[str]:
    return [line for r in caplog.records if r.levelno >= logging.getLogger("trtkld")
            .getEffectiveLevel() for line in r.getMessage().splitlines()]


def test_guard_findings_are_one_line_per_method_and_listed_with_v(env, capsys, caplog):
    argv = ["calibrate", env["model"], "--data", env["data"], "--out",
            env["root"] / "o.cache", "-q", "--table", "none", "--trt-version", "10.9.0"]
    assert _run(argv, capsys)[0] == 0
    guard = [line for line in _shown_lines(caplog) if "guard" in line or "tensor '" in line]
    assert len(guard) == 1 and "tensor(s) flagged" in guard[0], guard
    caplog.clear()
    assert _run(argv + ["-v"], capsys)[0] == 0
    assert len([line for line in _shown_lines(caplog) if "tensor '" in line]) > 3


def test_a_single_method_table_has_no_empty_flag_column(env, capsys):
    rc, out, _ = _run(["calibrate", "--from-histograms", env["hists"], "--out",
                       env["root"] / "o.cache", "--table", "full"], capsys)
    assert rc == 0
    header = out.splitlines()[0].split()
    assert "flag" not in header
    rc, out, _ = _run(["calibrate", "--from-histograms", env["hists"], "-m", "ppq,nvidia",
                       "--out", env["root"] / "o.{method}.cache", "--table", "full"], capsys)
    assert "flag" in out.splitlines()[0].split() and "flag DISAGREE" in out
