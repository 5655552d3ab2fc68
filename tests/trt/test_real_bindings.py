"""KLDCalibrator through TensorRT's REAL Python bindings (8.6.1, 10.0.1, 10.16.1.11, 11.4.0.106).

For each version (one child process each, as every wheel is the module ``tensorrt``): the
bindings wheel is pip-installed with ``--no-deps`` into ``$TRTKLD_TEST_CACHE`` (default
``~/.cache/trtkld-test``), stub TensorRT libraries and a C++ driver compiled against TensorRT's
headers are built there (tools/realbind), then tools/realbind/cases.py runs under pytest in the
child: TensorRT's own trampolines call our callbacks. Where gcc, CUDA's headers or the wheels
cannot be had, the test skips with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

VERSIONS = ("8.6.1", "10.0.1", "10.16.1.11", "11.4.0.106")


@pytest.mark.parametrize("version", VERSIONS)
def test_calibrator_through_real_bindings(realbind, repo_root, version):
    assert set(VERSIONS) == set(realbind.VERSIONS)
    try:
        setup = realbind.prepare(version)
    except realbind.Unavailable as exc:
        pytest.skip(f"TensorRT {version} real bindings unavailable: {exc}")
    env = realbind.subprocess_env(setup)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    cases = repo_root / "tools" / "realbind" / "cases.py"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         "--rootdir", str(cases.parent), str(cases)],
        cwd=str(repo_root), env=env, capture_output=True, text=True, timeout=900,
    )
    report = proc.stdout + proc.stderr
    print(report)  # the per-case lines (PASSED/SKIPPED with reasons) show with -rA / -s
    assert proc.returncode == 0, f"real-bindings cases failed on TensorRT {version}:\n{report}"
    assert " passed" in report
    if setup.driver is None:  # TensorRT 11: the refusal and the API check ran
        assert "cases.py::test_tensorrt_11_is_refused_with_the_pointer_to_qdq" in "\n".join(
            line for line in report.splitlines() if line.startswith("PASSED"))
