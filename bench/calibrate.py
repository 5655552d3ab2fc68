"""End-to-end `calibrate` time on a real model against inference alone and ORT's calibrator.

Prints, measured in the same run on the same 64 inputs:
  (a)  plain FP32 inference passes (ORT, default optimisations), once and twice;
  (a') the instrumented inference passes trtkld itself runs (every float tensor exposed);
  (b)  ONNX Runtime's quantize_static with CalibrationMethod.Entropy;
  trtkld calibrate (two passes, pass-1 activations kept in memory) and with the model run twice;
and the ratios. Usage: python bench/calibrate.py [--model demo|nsfw] [--inputs 64] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _model(name: str):
    """(model path, input name, preprocessing) of a bundled real model."""
    from trtkld import demo

    if name == "demo":
        return str(demo.demo_model_path()), "x", demo.DEMO_PREPROCESS
    return str(demo.nsfw_model_path()), "input:0", demo.NSFW_PREPROCESS


def _inputs(model: str, input_name: str, preprocess: dict, n: int) -> np.ndarray:
    """``n`` preprocessed inputs: calib_data images, then flipped/shifted variants."""
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.demo import DEMO_CALIB_DIR, preprocess_options

    specs = input_specs_from_onnx(model)
    data = open_data(
        str(DEMO_CALIB_DIR), specs, batch_size=1, preprocess=preprocess_options(preprocess)
    )
    base = np.concatenate([b.inputs[input_name] for b in data])
    h_axis, w_axis = (1, 2) if base.shape[-1] == 3 else (2, 3)
    variants = [base, np.flip(base, w_axis), np.flip(base, h_axis), np.roll(base, 17, w_axis)]
    variants += [np.roll(base, 31, h_axis), np.roll(np.flip(base, w_axis), 9, h_axis)]
    return np.ascontiguousarray(np.concatenate(variants)[:n])


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="best of N for each timing")
    parser.add_argument("--model", choices=["demo", "nsfw"], default="demo")
    args = parser.parse_args()

    import onnxruntime as ort

    from trtkld.collect import OnnxRuntimeCollector
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.pipeline import calibrate

    model, input_name, preprocess = _model(args.model)
    x = _inputs(model, input_name, preprocess, args.inputs)
    bs = args.batch_size
    batches = [x[i : i + bs] for i in range(0, len(x), bs)]
    print(f"model {Path(model).name}, {len(x)} inputs, batch {bs}, best of {args.repeat}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "npy"
        folder.mkdir()
        for i, sample in enumerate(x):
            np.save(folder / f"{i:03d}.npy", sample)
        specs = input_specs_from_onnx(model)
        data = open_data(str(folder), specs, batch_size=bs)

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

        def plain_pass():
            for b in batches:
                session.run(None, {input_name: b})

        collector = OnnxRuntimeCollector(model)

        def instrumented_pass():
            for b in data:
                collector.run(b)

        def ours_cached():
            calibrate(model, data, ["ppq"], trt_version="10.9.0", quiet=True,
                      memory_budget_bytes=16 << 30)

        def ours_two_model_passes():  # the default
            calibrate(model, data, ["ppq"], trt_version="10.9.0", quiet=True,
                      memory_budget_bytes=0)

        def ours_all_kld():
            calibrate(model, data, ["ppq", "nvidia", "modelopt"], trt_version="10.9.0",
                      quiet=True)

        def ort_entropy():
            from onnxruntime.quantization import (
                CalibrationDataReader,
                CalibrationMethod,
                QuantFormat,
                quantize_static,
            )

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self._it = iter(batches)

                def get_next(self):
                    b = next(self._it, None)
                    return None if b is None else {input_name: b}

            quantize_static(
                model, str(Path(tmp) / "ort_entropy.onnx"), Reader(),
                quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.Entropy,
            )

        plain_pass()  # warm up ORT and numba before timing anything
        ours_cached()
        t_plain = _timed(plain_pass, args.repeat)
        t_instr = _timed(instrumented_pass, args.repeat)
        t_ours = _timed(ours_cached, args.repeat)
        t_ours2 = _timed(ours_two_model_passes, args.repeat)
        t_ours3 = _timed(ours_all_kld, args.repeat)
        t_ort = _timed(ort_entropy, 1)

    rows = [
        ("(a)  plain FP32 inference, 1 pass", t_plain),
        ("(a)  plain FP32 inference, 2 passes", 2 * t_plain),
        ("(a') instrumented inference (all tensors out), 1 pass", t_instr),
        ("trtkld calibrate ppq (model run twice, the default)", t_ours2),
        ("trtkld calibrate ppq (pass-1 activations kept)", t_ours),
        ("trtkld calibrate ppq,nvidia,modelopt (one collection)", t_ours3),
        ("(b)  ORT quantize_static Entropy", t_ort),
    ]
    for label, t in rows:
        print(f"{label:58s} {t * 1000:9.1f} ms")
    print(f"ratio calibrate / (a) 2 plain passes          : {t_ours2 / (2 * t_plain):6.2f}x")
    print(f"ratio calibrate / (a') 2 instrumented passes  : {t_ours2 / (2 * t_instr):6.2f}x")
    print(f"ratio kept activations / model run twice      : {t_ours / t_ours2:6.2f}x")
    print(f"speed-up vs (b) ORT Entropy                   : {t_ort / t_ours2:6.2f}x")


if __name__ == "__main__":
    main()
