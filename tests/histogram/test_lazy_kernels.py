"""numba kernels load on first use, one dtype at a time (numba's cache loading costs time)."""
from __future__ import annotations


def test_kernels_load_only_when_used():
    # float64 kernels are not loaded by float32 work (numba cache loading costs time)
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from trtkld.histogram import abs_histogram, kernels\n"
        "abs_histogram(np.ones(10, np.float32), 16, 1.0)\n"
        "print(kernels.hist_minmax_32._dispatcher is not None,"
        " kernels.hist_minmax_64._dispatcher is None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True"]
