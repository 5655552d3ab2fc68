"""Tests of `trtkld report`: the HTML page, its PNGs, the data behind the plots, and the page in a
real browser (headless Debian Chromium; skipped with the reason when it is missing).

The fixture is a real HistogramSet filled by trtkld.histogram from synthetic activations of the
shapes real models produce (ReLU, normal, heavy-tailed, all-zero, NaN/Inf-polluted), searched
by the real searches through trtkld.pipeline.
"""
from __future__ import annotations

import html.parser
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trtkld.cli.main import main as cli_main
from trtkld.errors import DataError, TrtkldError
from trtkld.histogram import AbsmaxTracker, HistogramSet
from trtkld.pipeline import search_histograms
from trtkld.report import load_eval, parse_eval, tensor_plot_data, write_report
from trtkld.report.build import default_report_dir
from trtkld.report.plots import display_histogram, plot_file_name
from trtkld.report.summary import amax_spread, build_rows

METHODS = ["ppq", "nvidia", "modelopt", "max", "percentile"]
NASTY = 'a<b>&"c'
MATHY = "blk/$\\frac$/out:0"
BINS = 4096


def _activations() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    n = 30_000
    polluted = rng.normal(0.0, 0.7, n).astype(np.float32)
    polluted[[5, 50, 500, 5000, 9000, 12000, 29999]] = np.nan
    polluted[[7, 70]] = np.inf
    polluted[77] = -np.inf
    return {
        "input:0": rng.normal(0.0, 1.0, (2, 3, 50, 50)).astype(np.float32),
        "/stem/conv/Relu_output_0": np.maximum(rng.normal(0.2, 1.5, n), 0).astype(np.float32),
        "/blocks.3/act/Mul_output_0": rng.standard_t(2.0, n).astype(np.float32),
        "/head/Constant_output_0": np.zeros(64, np.float32),
        "/blocks.5/Div_output_0": polluted,
        NASTY: rng.uniform(-3.0, 3.0, 4000).astype(np.float32),
        # a pair of "$" starts matplotlib mathtext; "\\frac" without arguments would crash it
        MATHY: rng.exponential(0.5, 5000).astype(np.float32),
    }


@pytest.fixture(scope="module")
def hists() -> HistogramSet:
    arrays = _activations()
    tracker = AbsmaxTracker(list(arrays))
    tracker.update_many(arrays)
    hs = tracker.histograms(BINS)
    hs.update_many(arrays)
    return hs


@pytest.fixture(scope="module")
def results(hists):
    return {m: search_histograms(hists, m) for m in METHODS}


@pytest.fixture(scope="module")
def report(hists, results, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "model.report"
    return write_report(hists, results, out)


class _PageParser(html.parser.HTMLParser):
    """Collects the summary rows (data-tensor), <img> sources and the figure ids."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.imgs: list[str] = []
        self.figure_ids: list[str] = []
        self.links: list[str] = []
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table == "summary" and "data-tensor" in a:
            self.rows.append(a["data-tensor"])
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "figure":
            self.figure_ids.append(a["id"])
        elif tag == "a" and self._table == "summary":
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


def _parse(index: Path) -> _PageParser:
    p = _PageParser()
    p.feed(index.read_text(encoding="utf-8"))
    p.close()
    return p


# --------------------------------------------------------------------------- the page
def test_one_row_per_tensor_in_model_order(report, hists):
    page = _parse(report.index)
    assert page.rows == list(hists)
    assert [r.name for r in report.rows] == list(hists)


def test_every_img_is_a_decodable_png_inside_the_folder(report):
    from PIL import Image

    page = _parse(report.index)
    assert len(page.imgs) == len(report.plots) == len(report.rows)  # 6 tensors < default cap
    for src in page.imgs:
        assert not src.startswith(("/", "file:", "http")), src  # self-contained folder
        path = report.out_dir / src
        assert path.is_file(), src
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.width > 100 and im.height > 50
    # every link of the table leads to a figure of the page
    assert sorted(h.lstrip("#") for h in page.links) == sorted(page.figure_ids)


def test_table_values_are_the_search_results(report, results):
    for row in report.rows:
        cells = {c.method: c for c in row.cells}
        assert list(cells) == METHODS
        for m in METHODS:
            r = results[m][row.name]
            assert cells[m].amax == r.amax
            assert cells[m].scale == float(r.scale)
            assert cells[m].clipped_percent == 100.0 * r.clipped_fraction
            assert cells[m].fallback == r.fallback


def test_spread_and_flag_follow_the_amax_ratio(report, results):
    for row in report.rows:
        amaxes = [results[m][row.name].amax for m in METHODS
                  if m != "max" and results[m][row.name].fallback is None]
        expected = max(amaxes) / min(amaxes) if len(amaxes) >= 2 else 1.0
        assert row.spread == pytest.approx(expected, rel=1e-15)
        assert row.disagree == (expected > 2.0)
    zero = next(r for r in report.rows if r.name == "/head/Constant_output_0")
    assert zero.all_zero and zero.spread == 1.0 and not zero.disagree
    # max is excluded: on the heavy-tailed tensor max alone is far above every KL search
    tail = next(r for r in report.rows if r.name == "/blocks.3/act/Mul_output_0")
    by = {c.method: c.amax for c in tail.cells}
    assert by["max"] / by["ppq"] > tail.spread


def test_nan_inf_counts_reach_the_table(report):
    row = next(r for r in report.rows if r.name == "/blocks.5/Div_output_0")
    assert (row.num_nan, row.num_posinf, row.num_neginf) == (7, 2, 1)
    text = report.index.read_text(encoding="utf-8")
    tr = re.search(r'<tr[^>]*data-tensor="/blocks\.5/Div_output_0">(.*?)</tr>', text, re.S)
    assert tr is not None
    assert '<td class="bad">7</td>' in tr.group(1)


def test_html_escaping_of_tensor_names(report, hists):
    text = report.index.read_text(encoding="utf-8")
    assert "a&lt;b&gt;&amp;&quot;c" in text
    assert NASTY not in text and "a<b>" not in text
    # and the browser-side parse gives the original name back
    assert NASTY in _parse(report.index).rows
    # the PNG name is sanitised, deterministic and indexed by model order
    index = list(hists).index(NASTY)
    assert (report.out_dir / "plots" / f"{index:04d}_a_b_c.png").is_file()


def test_report_is_deterministic(hists, results, report, tmp_path):
    again = write_report(hists, results, tmp_path / "again.report")
    assert again.index.read_bytes() == report.index.read_bytes()
    assert [p.name for p in again.plots] == [p.name for p in report.plots]
    for a, b in zip(again.plots, report.plots):
        assert a.read_bytes() == b.read_bytes(), a.name


# --------------------------------------------------------------------------- what is drawn
def test_threshold_lines_are_the_search_amax(hists, results):
    for name, hist in hists.items():
        per = {m: results[m][name] for m in METHODS}
        data = tensor_plot_data(hist, per)
        assert [t.method for t in data.thresholds] == METHODS
        for t in data.thresholds:
            assert t.amax == per[t.method].amax
            assert t.fallback == per[t.method].fallback


def test_kl_curves_in_activation_units_match_the_spec(hists, results):
    # Oracle from docs/kld-spec.md: ppq T = r * R/4096; nvidia (m + 0.5) * R/2048;
    # modelopt i * R/2048 (the pipeline rebins to each method's default bins).
    rule = {"ppq": (0.0, 4096), "nvidia": (0.5, 2048), "modelopt": (0.0, 2048)}
    checked = 0
    for name, hist in hists.items():
        per = {m: results[m][name] for m in METHODS}
        data = tensor_plot_data(hist, per)
        if hist.hist_max == 0:
            assert data.curves == () and data.counts.size == 0
            continue
        assert [c.method for c in data.curves] == ["ppq", "nvidia", "modelopt"]
        for c in data.curves:
            r = per[c.method]
            offset, bins = rule[c.method]
            assert c.x_is_amax
            np.testing.assert_allclose(c.x, (r.candidates + offset) * hist.hist_max / bins,
                                       rtol=1e-12)
            expected_y = np.where(np.isfinite(r.divergences), r.divergences, np.nan)
            np.testing.assert_array_equal(c.y, expected_y)
            assert c.chosen_x == r.amax
            assert c.chosen_y == pytest.approx(r.kl, rel=1e-12)
            checked += 1
    assert checked == 3 * sum(h.hist_max > 0 for h in hists.values())


def test_curves_of_auto_mse_and_unknown_index_conventions(hists, results):
    import dataclasses

    name = "/blocks.3/act/Mul_output_0"
    hist = hists[name]
    nvidia = results["nvidia"][name]
    # auto draws the curve of the search it picked; mse's squared error is not a KL curve
    auto = dataclasses.replace(nvidia, method="auto", chosen_method="nvidia")
    mse = search_histograms(hists, "mse")[name]
    assert mse.candidates is not None
    data = tensor_plot_data(hist, {"auto": auto, "mse": mse})
    assert [c.method for c in data.curves] == ["auto"]
    ref = tensor_plot_data(hist, {"nvidia": nvidia}).curves[0]
    np.testing.assert_array_equal(data.curves[0].x, ref.x)
    auto_mse = search_histograms(hists, "auto")[name]
    if auto_mse.chosen_method not in ("ppq", "nvidia", "modelopt"):
        assert tensor_plot_data(hist, {"auto": auto_mse}).curves == ()
    # an index that does not follow the spec's convention would put candidates beyond the
    # histogram: every curve then falls back to candidate indices rather than a wrong axis
    odd = dataclasses.replace(results["ppq"][name], index=results["ppq"][name].index // 2)
    data = tensor_plot_data(hist, {"ppq": odd, "nvidia": nvidia})
    assert [c.x_is_amax for c in data.curves] == [False, False]
    np.testing.assert_array_equal(data.curves[1].x, nvidia.candidates)
    assert data.curves[1].chosen_x == nvidia.index


def test_display_histogram_sums_adjacent_bins_exactly(hists):
    hist = hists["/stem/conv/Relu_output_0"]
    edges, counts = display_histogram(hist.counts, hist.hist_max, 512)
    np.testing.assert_array_equal(counts, hist.counts.reshape(512, 8).sum(axis=1))
    assert edges[0] == 0.0 and edges[-1] == hist.hist_max and edges.shape == (513,)
    # a bin count that is not a multiple of the group: the short last group is kept
    odd = np.arange(1, 1001, dtype=np.int64)
    e, c = display_histogram(odd, 10.0, 300)
    assert c.sum() == odd.sum() and c.shape == (250,) and c[-1] == odd[-4:].sum()
    assert e[-1] == 10.0


def test_plot_file_names_are_safe_and_unique():
    names = ["/a/b:0", "_a_b_0", "x" * 200, "..", "é/ü"]
    files = [plot_file_name(i, n) for i, n in enumerate(names)]
    assert len(set(files)) == len(files)
    for f in files:
        assert re.fullmatch(r"\d{4}_[A-Za-z0-9._-]+\.png", f) and len(f) <= 70, f
    assert files[0] == "0000_a_b_0.png" and files[3] == "0003_tensor.png"


# --------------------------------------------------------------------------- --max-plots
def test_max_plots_keeps_the_largest_spread_and_every_row(hists, results, tmp_path):
    out = tmp_path / "capped.report"
    first = write_report(hists, results, out, max_plots=None)  # a previous report: every plot
    (out / "plots" / "mine.png").write_bytes(b"a user's figure")
    (out / "notes.txt").write_text("mine")
    rep = write_report(hists, results, out, max_plots=2)
    page = _parse(rep.index)
    assert page.rows == list(hists)
    spreads = sorted((-r.spread, r.index) for r in rep.rows)[:2]
    expected = [rep.rows[i].plot_file for _, i in spreads]
    assert [p.name for p in rep.plots] == expected
    assert len(first.plots) > 2
    # the previous report's extra figures are gone; files the report did not write stay
    assert sorted(os.listdir(out / "plots")) == sorted(expected + ["mine.png"])
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "plots" / "mine.png").read_bytes() == b"a user's figure"
    assert len(page.imgs) == 2 and len(page.links) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_bad_arguments_are_clear_errors(hists, results, tmp_path):
    with pytest.raises(DataError, match="max-plots"):
        write_report(hists, results, tmp_path / "r", max_plots=-1)
    with pytest.raises(DataError, match="no search results"):
        write_report(hists, {}, tmp_path / "r")
    (tmp_path / "file.report").write_text("x")
    with pytest.raises(DataError, match=r"file\.report.*not a folder"):
        write_report(hists, results, tmp_path / "file.report")
    stray = {"ppq": {**results["ppq"], "ghost": results["ppq"]["input:0"]}}
    with pytest.raises(DataError, match="'ghost'"):
        write_report(hists, stray, tmp_path / "r")


def test_default_report_dir_is_next_to_the_input(tmp_path):
    assert default_report_dir(tmp_path / "model.cache") == tmp_path / "model.report"
    assert default_report_dir("m.onnx") == Path("m.report")


# --------------------------------------------------------------------------- eval JSON
def _fidelity(name: str, kind: str, results, arrays, destructive: str | None = None):
    """A MethodEval holding real per-tensor SQNR: each tensor fake-quantized (INT8 Q/DQ) with
    the method's scale, measured by trtkld.evaluate's own metrics."""
    from trtkld.evaluate import MethodEval
    from trtkld.fidelity import fake_quantize, sqnr_db

    tensor_sqnr = {}
    for tensor, x in arrays.items():
        finite = x[np.isfinite(x)].astype(np.float64)
        q = fake_quantize(finite, float(results[tensor].scale)).astype(np.float64)
        tensor_sqnr[tensor] = sqnr_db(float(np.sum(finite**2)), float(np.sum((finite - q) ** 2)))
    return MethodEval(
        name=name, kind=kind, description=f"{name} thresholds", output_sqnr_db=28.5,
        cosine=0.99931, top1_agreement=0.9583, outputs={}, tensor_sqnr_db=tensor_sqnr,
        tensor_clipped={}, scales={t: float(r.scale) for t, r in results.items()},
        quantized_tensors=len(results), left_float={}, destructive_reason=destructive,
    )


def test_eval_json_from_trtkld_eval_in_the_page(hists, results, tmp_path):
    from trtkld.evaluate import EvalReport, write_json

    arrays = _activations()
    methods = [
        _fidelity("ppq", "trtkld", results["ppq"], arrays),
        _fidelity("max", "trtkld", results["max"], arrays, destructive="output SQNR < 10 dB"),
        _fidelity("ort-entropy", "peer", results["nvidia"], arrays),
    ]
    methods[0].output_sqnr_db = 31.25
    report = EvalReport(model="demo.onnx", calib_data="calib_data", eval_data="eval_data",
                        num_calib_samples=12, num_eval_samples=24, trt_version="10.9.0",
                        op_types=("Conv", "Gemm"), per_channel=True, floor_db=10.0,
                        margin_db=6.0, methods=methods)
    path = tmp_path / "eval.json"
    write_json(report, path)

    table = load_eval(path)
    assert [m for m, _ in table.rows] == ["ppq", "max", "ort-entropy"]
    assert table.meta["best_method"] == "ppq" and table.meta["model"] == "demo.onnx"
    assert {"output_sqnr_db", "cosine", "top1_agreement", "destructive_reason"} <= set(
        table.columns)
    # per-tensor SQNR: the numbers eval wrote, null (all-zero tensor: NaN) left out
    for m in methods:
        expected = {t: v for t, v in m.tensor_sqnr_db.items() if math.isfinite(v)}
        assert table.per_tensor_sqnr[m.name] == pytest.approx(expected, rel=1e-15)
    assert "/head/Constant_output_0" not in table.per_tensor_sqnr["ppq"]

    rep = write_report(hists, results, tmp_path / "e.report", eval_table=table, max_plots=0)
    text = rep.index.read_text(encoding="utf-8")
    fidelity = re.search(r'<table id="fidelity">(.*?)</table>', text, re.S).group(1)
    assert '<tr class="best"><td class="name">ppq</td>' in fidelity and "31.25" in fidelity
    assert '<tr class="destructive"><td class="name">max</td>' in fidelity
    assert "output SQNR &lt; 10 dB" in fidelity and "ort-entropy" in fidelity
    row = next(r for r in rep.rows if r.name == NASTY)
    sq = {c.method: c.sqnr_db for c in row.cells}
    assert sq["ppq"] == pytest.approx(methods[0].tensor_sqnr_db[NASTY], rel=1e-15)
    assert sq["max"] == pytest.approx(methods[1].tensor_sqnr_db[NASTY], rel=1e-15)
    assert sq["nvidia"] is None  # eval has no "nvidia" entry; ort-entropy is not a column
    # INT8 on a uniform tensor: close to the textbook 6.02 * 8 - 1.25 dB for max
    assert 40.0 < sq["max"] < 50.0
    assert "SQNR dB" in text and rep.plots == ()


def test_eval_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json.*not valid JSON"):
        load_eval(bad)
    with pytest.raises(DataError, match="'methods'"):
        parse_eval({"rows": []}, "x.json")
    with pytest.raises(DataError, match="per_tensor_sqnr_db"):
        parse_eval({"methods": {"ppq": {"per_tensor_sqnr_db": [1, 2]}}}, "x.json")
    with pytest.raises(DataError, match="trtkld-eval/"):
        parse_eval({"schema": "other/2", "methods": {}}, "x.json")
    with pytest.raises(DataError, match=r"missing\.json"):
        load_eval(tmp_path / "missing.json")


def test_rows_with_a_missing_method_result(hists, results):
    partial = {"ppq": results["ppq"], "max": {n: results["max"][n] for n in list(hists)[:2]}}
    rows = build_rows(hists, partial)
    assert [len(r.cells) for r in rows] == [2, 2] + [1] * (len(hists) - 2)
    assert amax_spread(()) == 1.0


# --------------------------------------------------------------------------- CLI
def test_cli_from_saved_histograms(hists, tmp_path, capsys):
    path = tmp_path / "model.hist.npz"
    hists.save(path)
    rc = cli_main(["report", "--histograms", str(path), "--method", "ppq,max",
                   "--max-plots", "3"])
    assert rc == 0
    index = tmp_path / "model.hist.report" / "index.html"
    assert f"{index} ({len(hists)} tensors, 3 plots" in capsys.readouterr().out
    assert _parse(index).rows == list(hists)


def _tiny_model(path: Path) -> None:
    """x [N,3,8,8] -> Conv(4 filters, 3x3) -> Relu -> y: a real ONNX model ORT runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv:out"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv:out"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_cli_collects_from_a_model_first(tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    _tiny_model(model)
    data = tmp_path / "calib.npy"
    np.save(data, np.random.default_rng(4).normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    saved = tmp_path / "tiny.hist.npz"
    rc = cli_main(["report", str(model), "--data", str(data), "--method", "nvidia,max",
                   "--batch-size", "2", "--save-histograms", str(saved)])
    assert rc == 0, capsys.readouterr().err
    index = tmp_path / "tiny.report" / "index.html"
    hists = HistogramSet.load(saved)
    assert {"x", "conv:out", "y"} <= set(hists)
    page = _parse(index)
    assert page.rows == list(hists) and len(page.imgs) == len(hists)
    # collected from the real model: y = relu(conv), so |y| peaks where conv peaks
    relu = hists["y"]
    assert relu.num_values == 6 * 4 * 8 * 8 and relu.counts.sum() == relu.num_values
    assert relu.min == 0.0 and relu.absmax == hists["conv:out"].max > 0.0


def test_cli_errors(hists, tmp_path, capsys):
    path = tmp_path / "h.npz"
    hists.save(path)
    assert cli_main(["report", "--histograms", str(path), "--method", "ppq,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli_main(["report", "--histograms", str(tmp_path / "none.npz")]) == 2
    assert "none.npz" in capsys.readouterr().err
    assert cli_main(["report"]) == 2
    assert "exactly one input" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "m.onnx")]) == 2
    assert "--data" in capsys.readouterr().err
    assert issubclass(DataError, TrtkldError)


# --------------------------------------------------------------------------- real browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _body_data(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


def test_page_renders_in_headless_chromium(hists, results, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not found on PATH (Debian: apt-get install chromium); "
                    "the report's browser check did not run")
    rep = write_report(hists, results, tmp_path / "b.report")
    url = rep.index.resolve().as_uri()

    done = _browser(exe, tmp_path / "profile", "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    data = _body_data(done.stdout)
    assert data.get("report-status") == "loaded", data
    assert int(data["images-total"]) == len(rep.plots) == len(hists)
    assert int(data["images-decoded"]) == len(rep.plots)
    assert int(data["summary-rows"]) == len(hists)

    shot = tmp_path / "shot.png"
    done = _browser(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,900",
                    "--hide-scrollbars", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape == (900, 1280)
    # rendered text, table lines and plots: far from a blank page
    assert pixels.std() > 10.0 and (pixels < 128).mean() > 0.01

    # The check can fail: a corrupt PNG is counted as not decoded.
    rep.plots[0].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    done = _browser(exe, tmp_path / "profile", "--dump-dom", url)
    data = _body_data(done.stdout)
    assert int(data["images-decoded"]) == len(rep.plots) - 1
    assert math.isfinite(float(data["images-total"]))
