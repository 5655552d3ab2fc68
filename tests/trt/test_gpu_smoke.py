"""tools/gpu_smoke.py: runs end to end on any machine, GPU parts SKIPped with their reason."""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def smoke(repo_root):
    spec = importlib.util.spec_from_file_location("gpu_smoke", repo_root / "tools" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    importlib.util.find_spec("pycuda") is not None,
    reason="pycuda is installed: on a GPU machine the smoke script runs alone (Dockerfile CMD)",
)
def test_smoke_script_runs_end_to_end(repo_root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(repo_root / "tools" / "gpu_smoke.py")],
                          capture_output=True, text=True, timeout=600, cwd=str(repo_root),
                          env=env)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines()
            if any(f"  {s}  " in line for s in ("PASS  ", "FAIL  ", "SKIP  "))]
    assert len(rows) == 13
    for line in rows:
        if " SKIP " in line:
            assert len(line.split("SKIP", 1)[1].split(None, 1)[1]) > 10, line  # has a reason
    assert " failed" in proc.stdout and "0 failed" in proc.stdout


def test_a_failing_part_fails_the_run(smoke):
    def boom():
        raise AssertionError("the bytes differ")

    def skipped():
        raise smoke.Skip("no GPU here")

    out = io.StringIO()
    code = smoke.run([("ok", "cpu", lambda: "fine"), ("bad", "cuda", boom),
                      ("skip", "tensorrt", skipped)], out=out)
    text = out.getvalue()
    assert code == 1
    assert "AssertionError: the bytes differ" in text and "no GPU here" in text
    assert "1 passed, 1 failed, 1 skipped" in text
