"""Sharded calibration on Ray: exact merging, byte-identical caches, failures, Ctrl-C, imports.

The Ray tests share one local cluster of 2 CPUs (session fixture ``ray_cluster``), started once
and shut down at the end. The oracle is always the one-process pipeline on the same data.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import trtkld
from trtkld.cli.main import main
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.data.shards import plan_shards
from trtkld.demo import DEMO_CALIB_DIR, DEMO_PREPROCESS, demo_model_path
from trtkld.pipeline import collect_histograms
from trtkld.scaleout import (
    CollectJob,
    RayUnavailableError,
    ShardFailedError,
    merge_histograms,
    merge_ranges,
    shard_histograms,
    shard_ranges,
)
from trtkld.search import available_methods

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted(p for p in DEMO_CALIB_DIR.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def _preprocess():
    from trtkld.data import PreprocessOptions

    options = dict(DEMO_PREPROCESS)
    return PreprocessOptions.preset(options.pop("preset"), **options)


@pytest.fixture(scope="module")
def six_images(tmp_path_factory) -> Path:
    """The first six demo calibration images, in their own folder."""
    folder = tmp_path_factory.mktemp("six")
    for path in IMAGES[:6]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def one_process(six_images):
    """``trtkld.calibrate`` in this process with every method (the oracle)."""
    data = _demo_data(six_images, batch_size=2)
    return trtkld.calibrate(str(demo_model_path()), data, available_methods(), quiet=True,
                            auto=None)


def _written(cal, folder: Path) -> dict[str, bytes]:
    """Every method's cache and sidecar as written by ``Calibration.write_cache``."""
    folder.mkdir()
    files = {}
    for method in cal.methods:
        path = folder / f"{method}.cache"
        cal.write_cache(path, method, trt_version="10.9.0")
        files[path.name] = path.read_bytes()
        sidecar = folder / f"{method}.cache.trtkld.json"
        files[sidecar.name] = sidecar.read_bytes()
    return files


def _demo_data(folder, batch_size=2, model=None):
    model = model or str(demo_model_path())
    return open_data(str(folder), input_specs_from_onnx(model), batch_size=batch_size,
                     preprocess=_preprocess())


# ---- shard work merged in-process (no Ray): the exactness argument itself --------------

def test_shard_work_merges_to_the_one_process_histograms(six_images, one_process):
    model = str(demo_model_path())
    data = _demo_data(six_images, batch_size=2)
    whole = one_process.histograms
    job = CollectJob(model=model, num_bins=4096)
    shards = plan_shards(data, 3)
    ranges = merge_ranges([shard_ranges(job, s.data) for s in shards])
    parts = [shard_histograms(job, s.data, ranges.absmax(), list(ranges.names)) for s in shards]
    merged = merge_histograms(parts)
    assert merged == whole
    assert list(merged) == list(whole)
    # each shard alone saw a smaller range for some tensors: the shared range is what merges
    alone = [shard_ranges(job, s.data).absmax() for s in shards]
    assert any(a[n] < ranges.absmax()[n] for a in alone for n in ranges.names)


# ---- on Ray -------------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 2, 3])
def test_ray_caches_are_byte_identical_for_every_method(ray_cluster, six_images, one_process,
                                                        shards, tmp_path):
    data = _demo_data(six_images, batch_size=2)
    # auto=None: auto's per-tensor histogram rule (the output-measured auto runs its own,
    # unsharded collection and is refused with executor="ray", see below)
    cal = trtkld.calibrate(str(demo_model_path()), data, available_methods(), quiet=True,
                           executor="ray", shards=shards, auto=None)
    assert cal.histograms == one_process.histograms
    expected = _written(one_process, tmp_path / "one")
    found = _written(cal, tmp_path / "ray")
    assert len(found) == 2 * len(available_methods())
    for name, content in expected.items():
        assert found[name] == content, name


def test_ray_refuses_the_output_measured_auto(six_images):
    from trtkld.scaleout import ScaleOutError

    data = _demo_data(six_images, batch_size=2)
    with pytest.raises(ScaleOutError, match="--auto-by histogram"):
        trtkld.calibrate(str(demo_model_path()), data, ["ppq", "auto"], quiet=True,
                         executor="ray", shards=2)


def test_ray_fixed_batch_with_padding_and_given_ranges(ray_cluster, six_images, tmp_path):
    from trtkld.scaleout import collect_histograms_ray

    # the demo model re-exported with a fixed batch of 4: 6 images -> 4 + (2 + 2 padding)
    proto = onnx.load(str(demo_model_path()))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    fixed = str(tmp_path / "fixed4.onnx")
    onnx.save(proto, fixed)
    data = _demo_data(six_images, batch_size=None, model=fixed)
    assert data.num_padded == 2
    whole = collect_histograms(fixed, data, num_bins=2048, quiet=True)
    assert collect_histograms_ray(fixed, data, num_bins=2048, shards=2, quiet=True) == whole
    ranges = {n: 2 * h.hist_max for n, h in whole.items()}   # ranges given: one pass only
    assert collect_histograms_ray(fixed, data, num_bins=2048, shards=2, hist_max=ranges,
                                  quiet=True) == \
        collect_histograms(fixed, data, num_bins=2048, hist_max=ranges, quiet=True)


def test_ray_cli_writes_the_same_cache_with_one_progress_bar(ray_cluster, six_images, tmp_path,
                                                             capsys):
    model = str(demo_model_path())
    common = ["calibrate", model, "--data", str(six_images), "--batch-size", "2",
              "--preset", "imagenet", "--method", "ppq,nvidia", "--trt-version", "10.9.0",
              "--table", "none"]
    assert main(common + ["-q", "--out", str(tmp_path / "one.{method}.cache")]) == 0
    capsys.readouterr()
    assert main(common + ["--ray", "local", "--shards", "3",
                          "--out", str(tmp_path / "ray.{method}.cache")]) == 0
    err = capsys.readouterr().err
    # one bar of 3 shards x 2 passes, renamed per pass (tqdm may skip drawing the last step)
    assert "ray pass 1/2 (absmax)" in err and "ray pass 2/2 (histograms)" in err
    assert set(re.findall(r"\d+/(\d+) \[", err)) == {"6"}
    for method in ("ppq", "nvidia"):
        assert (tmp_path / f"ray.{method}.cache").read_bytes() == \
            (tmp_path / f"one.{method}.cache").read_bytes()


def test_cli_connects_to_a_running_cluster_by_address(ray_cluster, six_images, tmp_path):
    # a second process joins the session's cluster through its address, as a user's driver
    # joins a remote cluster; it must leave that cluster running
    address = ray_cluster.get_runtime_context().gcs_address
    args = ["calibrate", str(demo_model_path()), "--data", str(six_images), "--batch-size", "2",
            "--trt-version", "10.9.0", "--table", "none", "-q"]
    assert main(args + ["--out", str(tmp_path / "one.cache")]) == 0
    child = subprocess.run(
        [sys.executable, "-m", "trtkld.cli.main", *args, "--ray", address,
         "--out", str(tmp_path / "remote.cache")],
        capture_output=True, text=True, env=_child_env(), cwd=tmp_path, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "2 shard(s)" in child.stderr          # default: one shard per cluster CPU
    assert (tmp_path / "remote.cache").read_bytes() == (tmp_path / "one.cache").read_bytes()
    assert ray_cluster.is_initialized() and ray_cluster.cluster_resources().get("CPU") == 2
    bad = subprocess.run(
        [sys.executable, "-m", "trtkld.cli.main", *args, "--ray", "127.0.0.1:1",
         "--out", str(tmp_path / "never.cache")],
        capture_output=True, text=True, env=_child_env(), cwd=tmp_path, timeout=300,
    )
    assert bad.returncode == 2 and "127.0.0.1:1" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "never.cache").exists()


def test_ray_retries_a_failing_task_then_names_the_shard(ray_cluster, six_images, tmp_path):
    from trtkld.scaleout.ray_executor import ShardRunner

    data = _demo_data(six_images, batch_size=2)
    shards = plan_shards(data, 2)
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(log_dir, shard_data):
        # fails on its first attempt only: Ray's retry must run it again
        first = shard_data.source.paths[0]
        marker = os.path.join(log_dir, os.path.basename(first))
        with open(marker, "a") as handle:
            handle.write("x")
        if os.path.getsize(marker) == 1:
            raise OSError(f"transient failure reading {first}")
        return shard_data.num_samples

    runner = ShardRunner(ray_cluster, shards, total_steps=2, max_retries=2, quiet=True)
    assert runner.map(flaky, str(attempts), desc="flaky") == [2, 4]
    assert sorted(p.stat().st_size for p in attempts.iterdir()) == [2, 2]

    def broken(log_dir, shard_data):
        if shard_data.source.paths[0].endswith(IMAGES[2].name):
            with open(os.path.join(log_dir, "broken"), "a") as handle:
                handle.write("x")
            raise ValueError("this shard cannot be read")
        return 0

    runner = ShardRunner(ray_cluster, shards, total_steps=2, max_retries=1, quiet=True)
    with pytest.raises(ShardFailedError) as info:
        runner.map(broken, str(attempts), desc="broken")
    message = str(info.value)
    assert "shard 1 (files 2-5" in message and IMAGES[2].name in message
    assert IMAGES[5].name in message and "after 1 retry" in message
    assert "ValueError: this shard cannot be read" in message
    assert (attempts / "broken").stat().st_size == 2      # first attempt + 1 retry


def test_ray_corrupt_image_fails_with_the_shard_and_file(ray_cluster, six_images, tmp_path):
    from trtkld.scaleout import collect_histograms_ray

    folder = tmp_path / "corrupt"
    shutil.copytree(six_images, folder)
    victim = folder / IMAGES[4].name
    content = victim.read_bytes()
    victim.write_bytes(content[:len(content) // 2])   # header intact, pixels cut off
    data = _demo_data(folder, batch_size=2)
    with pytest.raises(ShardFailedError) as info:
        collect_histograms_ray(str(demo_model_path()), data, num_bins=2048, shards=3,
                               quiet=True, max_retries=0)
    message = str(info.value)
    assert "shard 2 (files 4-5" in message and str(victim) in message


def test_missing_ray_names_the_extra(monkeypatch, six_images, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)     # "import ray" now raises ImportError
    from trtkld.scaleout.ray_executor import import_ray

    with pytest.raises(RayUnavailableError, match=r"pip install 'trtkld\[ray\]'"):
        import_ray()
    rc = main(["calibrate", str(demo_model_path()), "--data", str(six_images), "--ray", "local",
               "--trt-version", "10.9.0", "-q", "--out", str(tmp_path / "never.cache")])
    assert rc == 2 and not (tmp_path / "never.cache").exists()
    err = capsys.readouterr().err
    assert "'ray' extra" in err and "Traceback" not in err


def test_cli_scaleout_option_errors(six_images, capsys):
    model = str(demo_model_path())
    base = ["calibrate", model, "--trt-version", "10.9.0", "-q"]
    cases = [
        (["--data", str(six_images), "--shards", "2"], "add --ray local"),
        (["--data", str(six_images), "--ray", "local", "--shards", "0"], "at least 1"),
        (["--data-loader", "m:f", "--ray", "local"], "cannot be split"),
    ]
    for extra, expected in cases:
        assert main(base + extra) == 2
        assert expected in capsys.readouterr().err


def test_calibrating_without_ray_never_imports_it(tmp_path):
    script = (
        "import sys, trtkld, trtkld.scaleout\n"
        "from trtkld.cli.main import main\n"
        f"rc = main(['calibrate', '--demo', '--batch-size', '4', '-q', '--table', 'none',\n"
        f"           '--trt-version', '10.9.0', '--out', {str(tmp_path / 'd.cache')!r}])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print('RAY MODULES', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=_child_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RAY MODULES []" in out.stdout
    assert (tmp_path / "d.cache").exists()


def _child_env():
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _ray_daemons() -> set[int]:
    """PIDs of live Ray daemons on this machine (zombies, dead but not yet reaped, excluded)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if name in ("raylet", "gcs_server") and state != "Z":
                pids.add(int(entry))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for Ray daemons")
def test_ctrl_c_stops_the_local_cluster_and_writes_nothing(ray_cluster, tmp_path):
    # enough work that the run is still in pass 1 when interrupted: 40 x 12 images, batch 1
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        for path in IMAGES:
            os.symlink(path, folder / f"{i:02d}_{path.name}")
    out = tmp_path / "never.cache"
    before = _ray_daemons()
    child = subprocess.Popen(
        [sys.executable, "-m", "trtkld.cli.main", "calibrate", str(demo_model_path()),
         "--data", str(folder), "--batch-size", "1", "--ray", "local", "--shards", "2",
         "--trt-version", "10.9.0", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_child_env(),
        cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in child.stderr:     # the cluster is up and the shards are submitted
            if "shard(s) of" in line:
                break
        started = _ray_daemons() - before
        assert started, "the child started no Ray daemons"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        err = child.stderr.read()
        assert child.wait(timeout=60) == 130, err[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert not out.exists()
    deadline = time.time() + 60
    while started & _ray_daemons() and time.time() < deadline:
        time.sleep(0.5)
    assert not started & _ray_daemons(), f"the local cluster's daemons outlived the run: {err}"


def test_only_the_executor_imports_ray_and_only_inside_functions():
    import ast

    package = REPO / "trtkld"
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.append((path.relative_to(package).as_posix(), id(node) in top_level))
    assert found == [("scaleout/ray_executor.py", False)]
