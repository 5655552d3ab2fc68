"""trtkld.calibration.refine: run-time scale feeding, the greedy search, the cross-fitted
held-out objective, and a real refinement of the demo model on calibration images."""
from __future__ import annotations

import itertools
import math
import re
import shutil

import numpy as np
import pytest

from trtkld import demo
from trtkld.calibration.refine import (
    CANDIDATES,
    RefineOptions,
    coordinate_descent,
    refine_auto,
    spread_order,
)
from trtkld.data import Batch, input_specs_from_onnx, open_data
from trtkld.fidelity import (
    fold_indices,
    materialize,
    ort_session,
)
from trtkld.pipeline import collect_histograms, search_histograms
from trtkld.qdq import quantizable_activations, write_qdq_model

RNG = np.random.default_rng(99)


def test_coordinate_descent_finds_the_optimum_of_a_separable_objective():
    # Separable objective: coordinate descent with min_gain 0 must reach the per-tensor argmax.
    tensors = [f"t{i}" for i in range(5)]
    table = {(t, m): float(RNG.uniform(0, 10)) for t in tensors for m in CANDIDATES}
    calls = []

    def objective(a):
        calls.append(dict(a))
        return sum(table[(t, m)] for t, m in a.items())

    start = {t: "auto" for t in tensors}
    start_score = objective(start)
    got, score = coordinate_descent(objective, start, tensors, CANDIDATES, sweeps=2,
                                    min_gain_db=0.0)
    want = {t: max(CANDIDATES, key=lambda m, t=t: table[(t, m)]) for t in tensors}
    assert got == want
    assert score == pytest.approx(objective(want)) and score >= start_score
    # Deterministic: same calls, same result.
    calls.clear()
    again = coordinate_descent(objective, start, tensors, CANDIDATES, sweeps=2, min_gain_db=0.0)
    assert again == (got, score)


def test_coordinate_descent_never_goes_below_its_start_and_respects_min_gain():
    tensors = ["a", "b", "c"]
    noise = {k: float(RNG.normal()) for k in itertools.product(*[CANDIDATES] * 3)}

    def objective(a):  # rugged, non-separable
        return noise[(a["a"], a["b"], a["c"])]

    start = {t: "ppq" for t in tensors}
    for gain in (0.0, 0.5, 100.0):
        got, score = coordinate_descent(objective, start, tensors, CANDIDATES, sweeps=2,
                                        min_gain_db=gain)
        assert score == objective(got) and score >= objective(start)
        if gain == 100.0:
            assert got == start
    # Candidates with the same key as the current one are never tried.
    tried = []
    coordinate_descent(lambda a: tried.append(a["a"]) or 0.0, {"a": "max"}, ["a"],
                       CANDIDATES, sweeps=1, min_gain_db=0.0,
                       key=lambda t, m: "same" if m in ("max", "percentile") else m)
    assert "percentile" not in tried[1:] and len(tried) == 1 + len(CANDIDATES) - 2


def test_spread_order_ranks_by_disagreement():
    from trtkld.search import SearchResult

    def res(amax):
        return SearchResult("x", amax, np.float32(amax / 127), 0, math.nan, 0.0)

    results = {m: {"a": res(1.0), "b": res(1.0 if m != "max" else 8.0), "c": res(1.0)}
               for m in ("max", "percentile", "ppq")}
    results["ppq"]["c"] = res(2.0)
    assert spread_order(results, ["a", "b", "c"]) == ["b", "c", "a"]


# --------------------------------------------------------------------------- real demo model


@pytest.fixture(scope="module")
def demo_refine(tmp_path_factory):
    """4 calibration images of the demo set, refined twice (determinism)."""
    from trtkld.demo import preprocess_options

    folder = tmp_path_factory.mktemp("refine_calib")
    images = sorted(p for p in demo.DEMO_CALIB_DIR.iterdir() if p.suffix.lower() == ".jpg")
    for p in images[::3]:
        shutil.copy(p, folder / p.name)
    model = str(demo.demo_model_path())
    data = open_data(str(folder), input_specs_from_onnx(model),
                     preprocess=preprocess_options(demo.DEMO_PREPROCESS), batch_size=3)
    include = [re.escape(t) for t in quantizable_activations(model)]
    hists = collect_histograms(model, data, num_bins=4096, include=include, quiet=True)
    samples = materialize(data)
    options = RefineOptions(max_tensors=3, sweeps=1)
    runs = [refine_auto(model, samples, hists, options=options, quiet=True) for _ in range(2)]
    return model, data, hists, samples, runs


def test_demo_refinement_improves_held_out_and_is_deterministic(demo_refine):
    model, data, hists, samples, (first, second) = demo_refine
    assert first.num_samples == 4 == len(samples)
    assert first.heldout_refined_db >= first.heldout_start_db >= first.heldout_auto_db
    assert math.isfinite(first.heldout_refined_db)
    assert first.trials > 1 + 6 and first.seconds > 0
    assert len(first.tensors_refined) == 3
    # Only refined tensors may differ from the start assignment.
    assert set(first.changed) <= set(first.tensors_refined)
    assert all(m == first.start for t, m in first.chosen.items() if t not in first.changed)
    # Deterministic: same choices, same scales bit for bit.
    assert first.chosen == second.chosen
    assert first.heldout_refined_db == second.heldout_refined_db
    assert {t: s.tobytes() for t, s in first.scales.items()} == \
        {t: s.tobytes() for t, s in second.scales.items()}
    # The written thresholds are the chosen methods on the WHOLE calibration set's histograms.
    for method in set(first.chosen.values()):
        full = search_histograms(hists, method)
        for t, m in first.chosen.items():
            if m == method:
                assert first.results[t].scale.tobytes() == full[t].scale.tobytes(), t
    assert len(first.results) == len(hists)


def test_demo_held_out_objective_matches_written_models(demo_refine, tmp_path):
    """Oracle for the objective: per fold, histograms of the other fold, thresholds written
    into a Q/DQ model with write_qdq_model, run in eval's session on the held-out fold."""
    model, data, hists, samples, (first, _) = demo_refine
    from trtkld.fidelity import sqnr_db

    fp32 = ort_session(model, quantized=False)
    signal = noise = 0.0
    for f, held in enumerate(fold_indices(len(samples), 2)):
        train = [samples[i] for i in range(len(samples)) if i % 2 != f]
        batches = [Batch({k: np.concatenate([s[k] for s in train]) for k in train[0]},
                         tuple(f"s{i}" for i in range(len(train))))]
        fold_hists = collect_histograms(model, batches, num_bins=4096,
                                        include=[re.escape(t) for t in first.chosen],
                                        quiet=True)
        scales = {}
        for t, m in first.chosen.items():
            scales[t] = search_histograms(fold_hists, m)[t].scale
        path = tmp_path / f"fold{f}.onnx"
        write_qdq_model(model, scales, path, warn_left_float=False)
        sess = ort_session(path, quantized=True)
        # One run of the held-out fold, as the refinement batches it (ORT's results may differ
        # in the last bits between batch sizes).
        feeds = {k: np.concatenate([samples[i][k] for i in held]) for k in samples[0]}
        y = fp32.run(None, feeds)[0].astype(np.float64)
        q = sess.run(None, feeds)[0].astype(np.float64)
        signal += float(np.sum(y * y))
        noise += float(np.sum((y - q) ** 2))
    assert sqnr_db(signal, noise) == pytest.approx(first.heldout_refined_db, abs=1e-9)


def test_refinement_never_reads_evaluation_images(demo_refine):
    """The refined samples are the calibration images; none is an evaluation image."""
    model, data, _, samples, _ = demo_refine
    from trtkld.demo import preprocess_options

    evaluation = open_data(str(demo.DEMO_EVAL_DIR), input_specs_from_onnx(model),
                           preprocess=preprocess_options(demo.DEMO_PREPROCESS), batch_size=4)
    calib_arrays = [b.inputs["x"][i] for b in data for i in range(len(b.sources))]
    assert all(np.array_equal(s["x"][0], c) for s, c in zip(samples, calib_arrays))
    for batch in evaluation:
        for row in batch.inputs["x"]:
            assert not any(np.array_equal(row, s["x"][0]) for s in samples)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine_cli")
    calib, held = root / "calib", root / "eval"
    calib.mkdir()
    held.mkdir()
    for src, dst, n in ((demo.DEMO_CALIB_DIR, calib, 4), (demo.DEMO_EVAL_DIR, held, 2)):
        images = sorted(p for p in src.iterdir() if p.suffix.lower() == ".jpg")
        for p in images[::len(images) // n][:n]:
            shutil.copy(p, dst / p.name)
    return calib, held


def test_cli_eval_refine_adds_a_row_with_cost_and_gain(tiny_folders, tmp_path, capsys):
    import json

    from trtkld.cli.main import main

    calib, held = tiny_folders
    out = tmp_path / "e.json"
    assert main(["eval", "--demo", "--data", str(calib), "--eval-data", str(held),
                 "--method", "auto", "--peers", "none", "--refine", "--refine-tensors", "2",
                 "--refine-sweeps", "1", "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "auto+refine" in text and "trials in" in text and "vs auto" in text
    doc = json.loads(out.read_text())
    assert doc["schema"] == "trtkld-eval/1" and list(doc["methods"]) == ["auto", "auto+refine"]
    ref = doc["methods"]["auto+refine"]["refinement"]
    assert "refinement" not in doc["methods"]["auto"]
    assert ref["num_samples"] == 4 and ref["trials"] > 7 and len(ref["tensors_refined"]) == 2
    assert ref["heldout_refined_sqnr_db"] >= ref["heldout_auto_sqnr_db"]
    rows = doc["methods"]
    want = rows["auto+refine"]["output_sqnr_db"] - rows["auto"]["output_sqnr_db"]
    assert ref["eval_gain_over_auto_db"] == pytest.approx(want)
    assert main(["eval", "--demo", "--data", str(calib), "--eval-data", str(held),
                 "--refine", "--refine-sweeps", "-1"]) == 2


def test_cli_calibrate_refine_writes_the_chosen_methods_scales(tiny_folders, tmp_path, capsys):
    import json

    from trtkld.cache import parse_cache
    from trtkld.cli.main import main
    from trtkld.histogram import HistogramSet

    calib, _ = tiny_folders
    cache, npz = tmp_path / "d.cache", tmp_path / "h.npz"
    assert main(["calibrate", "--demo", "--data", str(calib), "--method", "auto", "--refine",
                 "--refine-tensors", "2", "--refine-sweeps", "1", "--quiet", "--table", "none",
                 "--out", str(cache), "--save-histograms", str(npz)]) == 0
    assert "auto refined:" in capsys.readouterr().out
    meta = json.loads((tmp_path / "d.cache.trtkld.json").read_text())
    assert meta["options"]["refine"]["max_tensors"] == 2
    methods = meta["tensor_methods"]
    scales = parse_cache(cache.read_bytes()).scales
    hists = HistogramSet.load(npz)
    assert set(methods) == set(scales)
    # Oracle: every cache scale is its recorded method's search on the saved histograms.
    for method in set(methods.values()):
        found = search_histograms(hists, method)
        for t, m in methods.items():
            if m == method:
                assert scales[t].tobytes() == np.float32(found[t].scale).tobytes(), t
    assert main(["calibrate", "--demo", "--data", str(calib), "--method", "ppq",
                 "--refine"]) == 2
    assert "add auto" in capsys.readouterr().err
