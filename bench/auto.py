"""Cost of the output-measured ``auto`` against plain ``calibrate --method ppq``.

Both run in this process on the same model and the same calibration data (the bundled
model's own calibration inputs), alternating, each timed ``--repeat`` times (best kept): the
ratio is what ``calibrate --method auto`` costs over ``calibrate --method ppq``. Also prints
auto's own split (collection, searches, held-out scoring, per-tensor mix).

Usage: python bench/auto.py [--model demo|nsfw|layout|ocr-det|ocr-rec] [--repeat 2]
"""
from __future__ import annotations

import argparse
import time


def _data(name: str):
    from trtkld import demo
    from trtkld.data import input_specs_from_onnx, open_data

    if name in ("demo", "nsfw"):
        model = str(demo.demo_model_path() if name == "demo" else demo.nsfw_model_path())
        pre = demo.DEMO_PREPROCESS if name == "demo" else demo.NSFW_PREPROCESS
        calib = demo.DEMO_CALIB_DIR
    else:
        bundled = demo.bundled_model(name)
        model, pre, calib = str(bundled.locate()), bundled.preprocess, bundled.calib_dir
    data = open_data(str(calib), input_specs_from_onnx(model),
                     preprocess=demo.preprocess_options(pre))
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from trtkld.calibration.auto import output_measured_auto
    from trtkld.pipeline import calibrate

    model, data = _data(args.model)
    plain, auto, split, chosen = float("inf"), float("inf"), {}, ""
    for _ in range(args.repeat):
        start = time.perf_counter()
        calibrate(model, data, ["ppq"], trt_version="10.9.0", quiet=True)
        plain = min(plain, time.perf_counter() - start)
        start = time.perf_counter()
        outcome = output_measured_auto(model, data, quiet=True)
        took = time.perf_counter() - start
        if took < auto:
            auto, split, chosen = took, outcome.seconds, outcome.chosen
    print(f"model {args.model}: {data.num_samples} calibration samples, {len(data)} batches")
    print(f"calibrate --method ppq   {plain:8.2f} s")
    print(f"calibrate --method auto  {auto:8.2f} s   ratio {auto / plain:.2f}x   "
          f"(chose {chosen})")
    print("auto split: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))


if __name__ == "__main__":
    main()
