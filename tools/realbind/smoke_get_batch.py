"""Child process of the GPU smoke script: ``get_batch`` through TensorRT's real bindings.

Started with ``harness.subprocess_env`` (the bindings are ``tensorrt``, the libraries stubs).
Builds a ``KLDCalibrator(method="tensorrt")`` on the demo model's input spec, drives
``getBatch`` through the C++ driver as TensorRT's builder would, and reads the bytes behind every
returned pointer back from the device (``--backend pycuda``: real device pointers; ``host``:
host buffers, for machines without a GPU). Prints one JSON line:
``{"ok": bool, "batches": n, "detail": "..."}``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["pycuda", "host"], required=True)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location(
        "realbind_harness", Path(__file__).with_name("harness.py")
    )
    harness = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = harness
    spec.loader.exec_module(harness)
    harness.activate()

    import numpy as np

    from trtkld import demo
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.trt.calibrator import KLDCalibrator
    from trtkld.trt.device import HostBufferBackend

    if args.backend == "pycuda":
        from trtkld.trt._backend import PycudaBackend

        backend = PycudaBackend()
    else:
        backend = HostBufferBackend()
    model = str(demo.demo_model_path())
    data = open_data(
        str(demo.DEMO_CALIB_DIR), input_specs_from_onnx(model), batch_size=4,
        preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS),
    )
    expected = list(data)[:3]
    driver = harness.Driver()
    with tempfile.TemporaryDirectory() as tmp:
        calib = KLDCalibrator(data, "tensorrt", Path(tmp) / "demo.cache", model,
                              device_backend=backend, quiet=True)
        if driver.read_calibration_cache(calib) is not None:
            return _report(False, 0, "read_calibration_cache returned a cache for 'tensorrt'")
        for i, batch in enumerate(expected):
            ptrs = driver.get_batch(calib, ["x"])
            if ptrs is None:
                return _report(False, i, f"getBatch returned false at batch {i}: {calib.errors}")
            want = batch.inputs["x"]
            got = np.empty_like(want)
            backend.copy_dtoh_ptr(got, ptrs[0])
            if got.tobytes() != want.tobytes():
                return _report(False, i, f"batch {i}: bytes at {ptrs[0]:#x} differ from the data")
        calib.close()
    backend.close()
    return _report(True, len(expected), f"{len(expected)} batches read back byte for byte "
                                        f"({args.backend}, TensorRT bindings {harness_version()})")


def harness_version() -> str:
    return str(sys.modules["tensorrt"].__version__)


def _report(ok: bool, batches: int, detail: str) -> int:
    print(json.dumps({"ok": ok, "batches": batches, "detail": detail}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
