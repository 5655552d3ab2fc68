"""Output-measured auto (trtkld.calibration.auto): ORT's rules reimplemented, the signed
histogram, the consumer-output objective, and a real selection on the demo model."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtkld import demo
from trtkld.calibration.auto import (
    AutoOptions,
    CandidateScore,
    Rule,
    WholeSetResults,
    apply_rule,
    apply_rules,
    apply_rules_many,
    candidate_rules,
    clamp_to_absmax,
    collect_folded,
    noise_aware_order,
    output_measured_auto,
)
from trtkld.calibration.local import ConsumerProbe, choose_per_tensor
from trtkld.cli.main import main
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.fidelity import fake_quantize
from trtkld.histogram import abs_histogram
from trtkld.histogram.signed import SignedHistogram, signed_histogram
from trtkld.pipeline import collect_histograms, search_histograms
from trtkld.qdq import prepare_model
from trtkld.search.ort_rules import search_ort_entropy, search_ort_percentile

RNG = np.random.default_rng(2024)


# --------------------------------------------------------------------------- signed histogram


def test_signed_histogram_folds_to_the_abs_histogram_and_matches_numpy():
    x = (RNG.standard_normal(50_000) * 3).astype(np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    r = float(np.nanmax(np.abs(x[np.isfinite(x)])))
    s = signed_histogram(x, 2048, r)
    np.testing.assert_array_equal(s[1024:] + s[:1024][::-1], abs_histogram(x, 1024, r))
    finite = x[np.isfinite(x)]
    want, _ = np.histogram(finite, 2048, range=(-r, r))
    # numpy puts a value exactly on a negative bin edge one bin higher; random floats never are
    np.testing.assert_array_equal(s, want)
    acc = SignedHistogram("x", 2048, r)
    acc.update(x[:20_000])
    acc.update(x[20_000:])
    np.testing.assert_array_equal(acc.counts, s)
    assert (acc.min, acc.max) == (float(finite.min()), float(finite.max()))


# --------------------------------------------------------------------------- ORT's rules


def _ort_entropy_amax(x: np.ndarray) -> float:
    """ONNX Runtime's own Entropy collector (2048 bins, 128 quantized bins), symmetric amax."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", True, 2048, 128, 99.999, None)
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect({"x": [x]})
        lo, hi = collector.compute_collection_result()["x"][:2]
    return max(abs(float(lo)), abs(float(hi)))


@pytest.mark.parametrize("kind", ["normal", "relu-heavy-tail", "skewed"])
def test_ort_entropy_reimplementation_matches_onnxruntime(kind):
    n = 100_000
    if kind == "normal":
        x = RNG.standard_normal(n) * 0.7
    elif kind == "relu-heavy-tail":
        x = np.maximum(RNG.standard_t(3, n), 0) + 0.01 * RNG.standard_normal(n)
    else:
        x = np.concatenate([RNG.exponential(1.0, n - 50), -RNG.exponential(8.0, 50)])
    x = x.astype(np.float32)
    t = float(np.abs(x).max())
    got = search_ort_entropy(signed_histogram(x, 2048, t), t, float(x.min()), float(x.max()))
    assert got.method == "ort-entropy" and got.scale > 0
    assert got.amax == pytest.approx(_ort_entropy_amax(x), rel=1e-5)
    assert got.scale == np.float32(got.amax / 127.0)


def test_ort_percentile_takes_the_lower_edge_and_never_zero():
    counts = np.zeros(2048, np.int64)
    counts[0] = 999_980
    counts[100] = 20
    got = search_ort_percentile(counts, 0.01, 20.48, percentile=99.999)
    assert got.amax == pytest.approx(100 * 0.01)       # lower edge of the bin reaching it
    only_zeros = np.zeros(2048, np.int64)
    only_zeros[0] = 5
    assert search_ort_percentile(only_zeros, 0.01, 20.48).amax == pytest.approx(0.01)


def test_per_sample_terms_add_up_to_the_streamed_fidelity_metrics():
    from trtkld.calibration.auto import join_terms, metric_of_samples, sample_terms
    from trtkld.fidelity import OutputAccumulator

    ref = RNG.standard_normal((7, 5)).astype(np.float32)
    test = ref + 0.3 * RNG.standard_normal((7, 5)).astype(np.float32)
    acc = OutputAccumulator("y")
    acc.update(ref[:3], test[:3])
    acc.update(ref[3:], test[3:])
    terms = join_terms({"y": sample_terms(ref[:3], test[:3], 3)},
                       {"y": sample_terms(ref[3:], test[3:], 4)})
    assert metric_of_samples(terms, "sqnr") == pytest.approx(acc.sqnr_db, abs=1e-9)
    assert metric_of_samples(terms, "cosine") == pytest.approx(acc.cosine, abs=1e-12)
    assert metric_of_samples(terms, "top1") == pytest.approx(acc.top1_agreement)
    keep = np.ones(7, bool)
    keep[2] = False
    acc2 = OutputAccumulator("y")
    acc2.update(ref[keep], test[keep])
    assert metric_of_samples(terms, "sqnr", keep) == pytest.approx(acc2.sqnr_db, abs=1e-9)
    # an output whose first axis is not the batch (a recognizer's [T, N, C]) is one sample
    seq = RNG.standard_normal((9, 1, 4))
    assert len(sample_terms(seq, seq * 1.1, 1)["noise"]) == 1


def test_clamp_keeps_a_fold_threshold_within_what_the_fold_saw():
    from trtkld.search import run_search

    counts = np.zeros(4096, np.int64)
    counts[:100] = 10
    r = run_search("max", counts[:2048], hist_max=8.0)
    clamped = clamp_to_absmax(r, 2.0)
    assert clamped.amax == 2.0 and clamped.scale == np.float32(2.0 / 127)
    assert clamp_to_absmax(r, 9.0) is r


# --------------------------------------------------------------------------- local objective


def _gemm_model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    w = RNG.standard_normal((6, 10)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Gemm", ["r", "W", "B"], ["Y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 10])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, w, b


def test_consumer_error_is_the_error_after_the_real_weights():
    model, w, _ = _gemm_model()
    prepared, _ = prepare_model(model)
    probe = ConsumerProbe(prepared, ["r"], ["Gemm"])
    assert probe.probed == ["r"]
    x = np.abs(RNG.standard_normal((4, 10))).astype(np.float32)
    scales = [0.001, 0.01, 0.05]
    got = probe.errors("r", [x], scales)
    for k, s in enumerate(scales):
        d = (fake_quantize(x, s).astype(np.float64) - x) @ w.T.astype(np.float64)
        assert got[k] == pytest.approx(float((d * d).sum()), rel=1e-4)
    # The smallest error wins; equal scales count once and the first label keeps them.
    cands = {"a": {"r": 0.001}, "b": {"r": 0.03}, "c": {"r": 0.03}}   # a clips at 0.127
    assert choose_per_tensor(probe, {"r": [x]}, cands, "a") == {"r": "b"}
    assert choose_per_tensor(probe, {}, cands, "a") == {"r": "a"}


# --------------------------------------------------------------------------- demo model


@pytest.fixture(scope="module")
def demo_few(tmp_path_factory):
    """6 calibration photos of the demo model, fed one per batch."""
    folder = tmp_path_factory.mktemp("auto_calib")
    images = sorted(p for p in demo.DEMO_CALIB_DIR.iterdir() if p.suffix.lower() in (".jpg",
                                                                                        ".png"))
    for p in images[:6]:
        shutil.copy(p, folder / p.name)
    model = str(demo.demo_model_path())
    pre = demo.preprocess_options(demo.DEMO_PREPROCESS)
    data = open_data(str(folder), input_specs_from_onnx(model), preprocess=pre, batch_size=1)
    return model, data, folder


def test_folded_histograms_sum_to_exactly_what_calibrate_collects(demo_few):
    model, data, _ = demo_few
    folded = collect_folded(model, data, folds=3, num_bins=4096, heldout_per_fold=1, quiet=True)
    plain = collect_histograms(model, data, num_bins=4096, quiet=True)
    assert folded.whole() == plain
    assert [len(h) for h in folded.heldout] == [1, 1, 1]
    whole_signed = folded.whole_signed()
    for name, hist in plain.items():
        s = whole_signed[name].counts
        if hist.hist_max > 0:   # the signed halves fold to the |x| histogram at half the bins
            np.testing.assert_array_equal(s[1024:] + s[:1024][::-1], hist.rebin(1024).counts)


def test_hist_sqnr_rule_assembled_from_the_others_equals_search_auto(demo_few):
    model, data, _ = demo_few
    hists = collect_histograms(model, data, num_bins=4096, quiet=True)
    tensors = list(hists)[:40]
    rules = candidate_rules()
    folded = collect_folded(model, data, folds=2, num_bins=4096, heldout_per_fold=1, quiet=True)
    got = apply_rules([r for r in rules if r.method != "ort-entropy"], folded.whole(), {},
                      tensors)
    want = search_histograms(hists, "auto")
    for t in tensors:
        a, b = got["hist-sqnr"][t], want[t]
        assert (a.amax, a.scale, a.chosen_method, a.scores) == (b.amax, b.scale,
                                                                b.chosen_method, b.scores)


def _same_result(a, b) -> bool:
    same_curve = (a.divergences is None and b.divergences is None) or np.array_equal(
        a.divergences, b.divergences, equal_nan=True)
    return (a.method, a.amax, a.scale, a.index, a.fallback, a.chosen_method, a.scores) == (
        b.method, b.amax, b.scale, b.index, b.fallback, b.chosen_method, b.scores) and same_curve


def test_batched_rules_and_whole_set_reuse_equal_one_rule_one_tensor_at_a_time(demo_few):
    """The fast paths (every rule's searches in one threaded, deduplicated batch; ORT entropy
    on threads; whole-set results searched once per tensor and reused) give exactly the
    results of the plain path: each rule on each tensor alone."""
    model, data, _ = demo_few
    folded = collect_folded(model, data, folds=2, num_bins=4096, heldout_per_fold=1, quiet=True)
    whole, signed = folded.whole(), folded.whole_signed()
    rules = candidate_rules()
    tensors = list(whole)[:30]
    got = apply_rules(rules, whole, signed, tensors)
    for rule in rules:
        if rule.method == "auto":
            continue
        for t in tensors[::3]:
            want = apply_rule(rule, whole, signed, [t])[t]
            assert _same_result(got[rule.label][t], want), (rule.label, t)
    cached = WholeSetResults(rules, whole, signed)
    first = cached.get(["hist-sqnr", "ort-entropy"], tensors[:10])     # a subset first
    later = cached.get(["ort-entropy", "hist-sqnr", "ppq"])             # then every tensor
    for label in ("hist-sqnr", "ort-entropy"):
        assert all(first[label][t] is later[label][t] for t in tensors[:10])   # reused
        assert all(_same_result(later[label][t], got[label][t]) for t in tensors)
    assert list(later["ppq"]) == list(whole)
    # Several histogram sets (the folds' training sets) in one batch: as each set alone.
    train = folded.training(0)
    many = apply_rules_many(rules, [train, (whole, signed)], tensors)
    alone = apply_rules(rules, *train, tensors)
    for label in alone:
        for t in tensors:
            assert _same_result(many[0][label][t], alone[label][t]), (label, t)
            assert _same_result(many[1][label][t], got[label][t]), (label, t)


def _top1_samples(score) -> np.ndarray:
    return next(t["same"] for t in score.per_sample.values() if not np.isnan(t["same"]).all())


def _stated_order(cands):
    """The README's top-1 rule, plainly: B = best top-1 (then SQNR; earliest on equality);
    C is tied with B when top1(B) - top1(C) <= the jackknife SE of that difference; the tied
    ones by SQNR (then top-1; earliest on equality) first, then the rest by (top-1, SQNR)."""
    best = cands[0]
    for c in cands[1:]:
        if (c.top1, c.sqnr_db) > (best.top1, best.sqnr_db):
            best = c
    a = _top1_samples(best)
    n = len(a)
    tied = []
    for c in cands:
        d = a - _top1_samples(c)
        loo = np.array([(d.sum() - d[i]) / (n - 1) for i in range(n)])
        se = math.sqrt((n - 1) / n * float(np.sum((loo - loo.mean()) ** 2)))
        if c is best or best.top1 - c.top1 <= se + 1e-9:
            tied.append(c)
    tied = sorted(tied, key=lambda c: (-c.sqnr_db, -c.top1))          # stable
    rest = sorted((c for c in cands if c not in tied), key=lambda c: (-c.top1, -c.sqnr_db))
    return tied + rest, tied


def _synthetic(label: str, same: list, sqnr_db: float):
    n = len(same)
    terms = {"signal": np.ones(n), "noise": np.full(n, 10 ** (-sqnr_db / 10)),
             "cosine": np.ones(n), "same": np.asarray(same, np.float64)}
    top1 = float(np.mean(terms["same"]))
    return CandidateScore(label, sqnr_db, 1.0, top1, top1, per_sample={"y": terms}, samples=n)


def test_top1_ties_within_one_jackknife_se_go_to_the_best_output_sqnr():
    ones = [1.0] * 16
    a = _synthetic("a", ones, 10.0)                       # top-1 1.0
    b = _synthetic("b", [0.0] + ones[1:], 20.0)           # one sample less: SE 1/16, tied
    c = _synthetic("c", [0.0, 0.0] + ones[2:], 30.0)      # two less: 0.125 > SE 0.085
    d = _synthetic("d", ones, 10.0)                       # exactly a: the earlier wins
    order, tie = noise_aware_order([a, b, c, d], "top1")
    assert [s.label for s in order] == ["b", "a", "d", "c"]
    assert tie["best_top1"] == "a" and tie["tied"] == ["b", "a", "d"] and tie["applied"]
    assert tie["se"]["b"] == pytest.approx(1 / 16) and tie["se"]["d"] == 0.0
    assert [s.label for s in _stated_order([a, b, c, d])[0]] == ["b", "a", "d", "c"]
    # No tie-break for a continuous metric: plain (score, SQNR) order, earlier on equality.
    as_sqnr = [dataclasses.replace(s, score=s.sqnr_db) for s in (a, b, c, d)]
    order, tie = noise_aware_order(as_sqnr, "sqnr")
    assert [s.label for s in order] == ["c", "b", "a", "d"] and tie == {}


def test_demo_auto_picks_the_best_held_out_candidate_deterministically(demo_few, tmp_path):
    import trtkld

    model, data, folder = demo_few
    options = AutoOptions(folds=2)     # default cap (32): every calibration sample scored
    plain = ["ppq", "nvidia", "modelopt", "mse", "max", "percentile"]
    cal = trtkld.calibrate(model, data, ["auto"] + plain, auto=options, quiet=True)
    out = cal.auto
    labels = [r.label for r in candidate_rules()]
    assert list(out.scores)[:len(labels)] == labels and "per-tensor" in out.scores
    assert out.metric == "top1"        # the demo model's output is [N, 4] class scores
    assert out.heldout_samples == data.num_samples == 6     # true k-fold: each scored once
    for label, s in out.scores.items():   # every score is a real measurement
        assert 0.0 <= s.top1 <= 1.0 and math.isfinite(s.sqnr_db), label
    # The stated rule, restated plainly: round 2 over the full-scored distinct candidates...
    full = [s for s in out.scores.values()
            if s.samples == out.heldout_samples and s.duplicate_of is None]
    assert len(full) >= 3 and full[-1].label == "per-tensor"
    order, tied = _stated_order(full)
    assert out.chosen == order[0].label and out.runner_up == order[1].label
    assert out.tie_break["tied"] == [s.label for s in tied]
    assert out.tie_break["applied"] == (out.chosen != out.tie_break["best_top1"])
    # ...and round 1: every candidate left out ranks below every finalist on round 1's samples.
    round1 = [s.round1 if s.samples == out.heldout_samples else s for s in out.scores.values()
              if s.duplicate_of is None and s.label != "per-tensor"]
    assert all(s is not None and 0 < s.samples < out.heldout_samples for s in round1)
    order1, _ = _stated_order(round1)
    assert {s.label for s in order1[:3]} == {s.label for s in full[:-1]}
    assert out.margin_se >= 0 and (out.margin >= 0 or out.runner_up in out.tie_break["tied"])
    if out.chosen != "per-tensor":          # a single rule: every tensor follows it
        assert set(out.tensor_rules.values()) == {out.chosen}
    assert all(np.isfinite(r.scale) and r.scale > 0 for r in out.results.values())
    # One collection: a chosen single rule gives exactly that method's cache.
    same = {"percentile-99.99": "percentile"}.get(out.chosen, out.chosen)
    if same in plain:
        assert cal.scales("auto") == cal.scales(same)
    assert set(cal.scales("auto")) == set(cal.scales("ppq"))

    # The CLI: same inputs -> same choice, byte-identical cache; the sidecar lists every score.
    caches = []
    for run in range(2):
        path = tmp_path / f"auto{run}.cache"
        assert main(["calibrate", model, "--data", str(folder), "--preset", "imagenet",
                     "--channel-order", "BGR", "--batch-size", "1", "--method", "auto",
                     "-o", str(path), "--quiet", "--table", "none",
                     "--trt-version", "10.9.0"]) == 0
        caches.append(path.read_bytes())
        side = json.loads((tmp_path / f"auto{run}.cache.trtkld.json").read_text())
        assert set(side["auto"]["scores"]) == set(out.scores)
        assert side["auto"]["chosen"] in side["auto"]["scores"]
        assert side["auto"]["runner_up"] in side["auto"]["scores"]
        assert side["auto"]["heldout_samples"] == 6
        tie = side["auto"]["top1_tie_break"]      # the CLI's 3 folds: its own tie set
        assert tie["tied"][0] == side["auto"]["chosen"] and tie["best_top1"] in tie["tied"]
        assert set(tie["tied"]) - {tie["best_top1"]} <= set(tie["se"])    # each with its SE
    assert caches[0] == caches[1]


def test_one_batch_is_split_into_samples_and_one_sample_is_an_error(demo_few, tmp_path):
    from trtkld.calibration.auto import _SingleSamples
    from trtkld.errors import DataError

    model, _, folder = demo_few
    pre = demo.preprocess_options(demo.DEMO_PREPROCESS)
    specs = input_specs_from_onnx(model)
    one_batch = open_data(str(folder), specs, preprocess=pre, batch_size=8)   # 6 + 2 padding
    assert len(one_batch) == 1
    singles = _SingleSamples(one_batch)
    assert len(singles) == 6 and len(list(singles)) == 6
    folded = collect_folded(model, one_batch, folds=2, num_bins=4096, heldout_per_fold=3,
                            quiet=True)
    assert [len(h) for h in folded.heldout] == [3, 3]
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(next(folder.iterdir()), lone)
    with pytest.raises(DataError, match="3 held-out folds need at least 3 calibration samples"):
        output_measured_auto(model, open_data(str(lone), specs, preprocess=pre), quiet=True)


def test_rule_labels_are_unique():
    labels = [r.label for r in candidate_rules()]
    assert len(labels) == len(set(labels))
    assert {"ppq", "nvidia", "modelopt", "mse", "max", "percentile-99.99",
            "percentile-99.999", "ort-entropy", "ort-percentile"} <= set(labels)
    assert Rule("x", "max").options == ()
