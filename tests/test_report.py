"""dmdask.report: the self-contained HTML report (issue 5).

Fast tests on synthetic jobless stores (tests/test_evaluate.py's ``make_store``) check the
numbers the page is drawn from against an independent NumPy computation and that every
section degrades to a "what is missing and how to produce it" note. The digits tests train a
real store (DigitsMLP: 1,000 random, 100 held-out and 100 replicate models), fit datamodels,
evaluate them against the store estimators, build the comparison and sample-complexity
Datasets from those real evaluations, write the report and open it in headless Chromium.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dmdask
from dmdask.analysis import estimators
from dmdask.analysis.evaluate import evaluation_runs
from dmdask.report import FIGURE_IDS, predicted_vs_actual, resolve_images, write_report

pytestmark = pytest.mark.viz

SECTIONS = ("sec-pred-actual", "sec-evaluation", "sec-comparison", "sec-sample-complexity",
            "sec-lambda-path", "sec-images", "sec-counterfactuals", "sec-support",
            "sec-selection")


# --------------------------------------------------------------------------- page parsing
class _Page(HTMLParser):
    """What the tests read from a page: figures (id, img src, caption), tables (id → body rows),
    which sections hold a 'missing' note, every src/href, and tag balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source"}

    def __init__(self, text: str):
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.tables: dict[str, int] = {}
        self.missing: dict[str, str] = {}
        self.sections: list[str] = []
        self.urls: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self._fig = self._sec = self._table = None
        self._in_missing = self._in_cap = self._in_tbody = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "section":
            self._sec = a.get("id")
            self.sections.append(self._sec)
        elif tag == "figure":
            self._fig = a.get("id")
            self.figures[self._fig] = {"src": None, "caption": "", "section": self._sec}
        elif tag == "img" and self._fig:
            self.figures[self._fig]["src"] = a.get("src")
        elif tag == "figcaption":
            self._in_cap = True
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = 0
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._table and self._in_tbody:
            self.tables[self._table] += 1
        elif tag == "p" and a.get("class") == "missing":
            self._in_missing = True
            self.missing.setdefault(self._sec, "")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag == "figure":
            self._fig = None
        elif tag == "figcaption":
            self._in_cap = False
        elif tag == "table":
            self._table = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "p":
            self._in_missing = False
        elif tag == "section":
            self._sec = None

    def handle_data(self, data):
        if self._in_cap and self._fig:
            self.figures[self._fig]["caption"] += data
        if self._in_missing:
            self.missing[self._sec] += data


def _parse(path) -> _Page:
    text = Path(path).read_text(encoding="utf-8")
    page = _Page(text)
    assert text.startswith("<!DOCTYPE html>")
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert page.sections == list(SECTIONS)
    # self-contained: nothing but inline data is referenced
    assert all(u.startswith("data:") for u in page.urls), page.urls
    assert "<script" not in text and "http://" not in text and "https://" not in text
    return page


def _png_size(b64: str) -> tuple[int, int]:
    import base64

    raw = base64.b64decode(b64.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


# --------------------------------------------------------------------------- synthetic stores
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Planted additive store (20 train, 5 targets, 40 held-out subsets × 3 runs) with LASSO
    datamodels and their evaluation."""
    from test_evaluate import make_store

    p = str(tmp_path_factory.mktemp("rep") / "s.zarr")
    make_store(p, N=20, T=5, n_fit=400, n_held=40, R=3)
    ds = dmdask.open_store(p)
    dm = dmdask.fit_datamodels(ds)
    return p, ds, dm, dmdask.evaluate(ds, dm)


def test_bare_store_page_is_valid_and_says_what_is_missing(synth, tmp_path):
    path = synth[0]
    out = write_report(tmp_path / "sub" / "r.html", store=path)
    assert out == tmp_path / "sub" / "r.html" and out.exists()
    assert not (tmp_path / "sub" / "r.html.tmp").exists()
    page = _parse(out)
    assert page.figures == {}
    assert set(page.missing) == set(SECTIONS)  # every section explains itself
    assert "dmdask fit STORE" in page.missing["sec-pred-actual"]
    assert "dmdask.evaluate" in page.missing["sec-evaluation"]
    assert "sample_complexity=" in page.missing["sec-sample-complexity"]
    text = out.read_text()
    assert os.path.abspath(path) in text
    assert "random: 400 of 400 trained" in text and "heldout: 40 of 40 trained" in text
    assert "replicate: 80 of 80 trained" in text
    assert f"<dt>dmdask</dt><dd>{dmdask.__version__}</dd>" in text


def test_nothing_at_all_still_gives_a_page(tmp_path):
    page = _parse(write_report(tmp_path / "r.html", store=None, title="empty <report>"))
    assert page.figures == {} and set(page.missing) == set(SECTIONS)
    text = (tmp_path / "r.html").read_text()
    assert "<title>empty &lt;report&gt;</title>" in text  # titles are escaped
    assert "No run store given" in page.missing["sec-pred-actual"]


def test_predicted_vs_actual_matches_numpy(synth):
    path, ds, dm, _ = synth
    pa = predicted_vs_actual(path, dm, max_points=100, seed=3)
    subsets, runs, group = evaluation_runs(ds)
    X = ds["mask"].values[subsets].astype(np.float64)
    Y = ds["margin"].values[runs].astype(np.float64)
    g = (X @ dm.weight.values.T.astype(np.float64) + dm.bias.values)[group]
    assert pa.n_pairs == Y.size == 120 * 5 and pa.n_subsets == 40 and pa.n_runs == 120
    assert pa.mse == pytest.approx(np.mean((g - Y) ** 2), rel=1e-9)
    assert pa.pearson == pytest.approx(np.corrcoef(g.ravel(), Y.ravel())[0, 1], abs=1e-12)
    fbar = np.stack([Y[group == k].mean(0) for k in range(40)])
    gm = X @ dm.weight.values.T.astype(np.float64) + dm.bias.values
    assert pa.pearson_mean == pytest.approx(np.corrcoef(gm.ravel(), fbar.ravel())[0, 1],
                                            abs=1e-12)
    # the subsample: at most max_points, genuine pairs, reproducible, seed-dependent
    assert pa.pred.size == pa.actual.size == 100 and pa.pred_mean.size == 100
    pairs = set(zip(np.round(g.ravel(), 9), np.round(Y.ravel(), 9), strict=True))
    assert all((round(p, 9), round(a, 9)) in pairs for p, a in zip(pa.pred, pa.actual,
                                                                    strict=True))
    again = predicted_vs_actual(path, dm, max_points=100, seed=3)
    np.testing.assert_array_equal(again.pred, pa.pred)
    other = predicted_vs_actual(path, dm, max_points=100, seed=4)
    assert not np.array_equal(other.pred, pa.pred)
    full = predicted_vs_actual(path, dm, max_points=10_000)
    assert full.pred.size == 600 and full.pred_mean.size == 200


def test_datamodels_of_another_store_are_refused_in_their_section(synth, tmp_path):
    path, ds, dm, _ = synth
    wrong = dm.isel(train=slice(0, 10))
    page = _parse(write_report(tmp_path / "r.html", store=path, datamodels=wrong))
    assert "10 training columns" in page.missing["sec-pred-actual"]
    assert "fig-pred-actual" not in page.figures
    assert "fig-lambda-path" in page.figures  # the λ path needs only the datamodels


def test_store_without_heldout_models_says_how_to_add_them(tmp_path):
    p = str(tmp_path / "s.zarr")
    dmdask.create_jobless_store(p, 12, 3, block_size=50, alpha=0.5)
    dmdask.add_models(p, "random", n=100)
    X = dmdask.open_store(p)["mask"].values.astype(np.float32)
    dmdask.write_block(p, 0, X[:50, :3] - X[:50, 3:6])
    dmdask.write_block(p, 1, X[50:, :3] - X[50:, 3:6])
    dm = dmdask.fit_datamodels(p)
    page = _parse(write_report(tmp_path / "r.html", store=p, datamodels=dm))
    assert "no completed held-out models" in page.missing["sec-pred-actual"]
    assert "--kind heldout" in page.missing["sec-pred-actual"]
    assert set(page.figures) == {"fig-lambda-path"}


def comparison_from(rows) -> xr.Dataset:
    """A comparison Dataset (dim ``row``) from real ``(estimator, n_models, evaluation)``
    triples: the means and CIs are the evaluations' own summary attributes."""
    evs = [ev for _, _, ev in rows]
    data = {m: ("row", [ev.attrs[f"{m}_mean"] for ev in evs])
            for m in ("spearman", "pearson", "mse", "auc", "lds", "r2")}
    data["lds_ci_low"] = ("row", [ev.attrs["lds_ci_low"] for ev in evs])
    data["lds_ci_high"] = ("row", [ev.attrs["lds_ci_high"] for ev in evs])
    data["calibrated"] = ("row", [bool(ev.attrs["calibrated"]) for ev in evs])
    data["lds_target"] = (("row", "target"), np.stack([ev["lds"].values for ev in evs]))
    outputs = {"dom_correctness": "correctness"}
    return xr.Dataset(
        data, coords={"row": np.arange(len(rows)),
                      "estimator": ("row", [r[0] for r in rows]),
                      "n_models": ("row", np.array([r[1] for r in rows], np.int64)),
                      "output": ("row", [outputs.get(r[0], "margin") for r in rows]),
                      "target": evs[0]["target"].values},
        attrs={"opt_mean": float(evs[0].attrs["opt_mean"])})


def test_comparison_table_marks_calibrated_rows(synth, tmp_path):
    path, ds, dm, ev = synth
    rows = [("lasso", 400, ev)]
    for name in ("dom_margin", "dom_correctness", "ols"):
        # against the margin: the correctness row is then calibrated (another output)
        rows.append((name, 400, dmdask.evaluate(ds, estimators.compute(ds, name),
                                                output="margin")))
    cmp = comparison_from(rows)
    assert list(cmp.calibrated.values) == [False, False, True, False]
    out = write_report(tmp_path / "r.html", store=path, comparison=cmp)
    page = _parse(out)
    assert page.tables["comparison-table"] == 4
    assert "fig-comparison-lds" in page.figures
    text = out.read_text()
    body = text.split("id='comparison-table'")[1].split("</table>")[0]
    trs = re.findall(r"<tr( class='calibrated')?>(.*?)</tr>", body.split("<tbody>")[1])
    assert [bool(c) for c, _ in trs] == [False, False, True, False]
    for (_, cells), (name, _, e) in zip(trs, rows, strict=True):
        assert f">{name}<" in cells
        assert f"{e.attrs['lds_mean']:.3f} ± " in cells
    # without per-target LDS the plot falls back to means with CIs; a missing variable is named
    page = _parse(write_report(tmp_path / "r2.html", store=path,
                               comparison=cmp.drop_vars("lds_target")))
    assert "fig-comparison-lds" in page.figures
    assert "mean LDS with its CI" in page.figures["fig-comparison-lds"]["caption"]
    page = _parse(write_report(tmp_path / "r3.html", store=path,
                               comparison=cmp.drop_vars("auc")))
    assert "auc" in page.missing["sec-comparison"]


def test_images_given_explicitly_show_the_largest_weights(synth, tmp_path):
    path, ds, dm, _ = synth
    rng = np.random.default_rng(0)
    train_imgs, target_imgs = rng.random((20, 5, 5)), rng.random((5, 5, 5, 3))
    out = write_report(tmp_path / "r.html", store=path, datamodels=dm,
                       images=lambda d: {"train": train_imgs, "target": target_imgs},
                       n_examples=2, top_k=3)
    page = _parse(out)
    assert "fig-images" in page.figures and page.tables["images-table"] == 2
    body = out.read_text().split("id='images-table'")[1].split("</table>")[0]
    W = dm.weight.values
    for t, tr in zip((0, 4), re.findall(r"<tr><td>(\d+)</td>.*?</tr>",
                                        body.split("<tbody>")[1]), strict=True):
        assert int(tr) == t  # targets 0 and 4: spread over the five, ends included
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", body).group(1)
    pos_cell = re.findall(r"<td class='l'>(.*?)</td>", first_row)[0]
    shown = [int(j) for j in re.findall(r"(\d+) \(\+", pos_cell)]
    expect = [j for j in np.argsort(-W[0], kind="stable")[:3] if W[0, j] > 0]
    assert shown == expect and len(shown) > 0
    # wrong shapes are refused in the section; the rest of the page stands
    page = _parse(write_report(tmp_path / "bad.html", store=path, datamodels=dm,
                               images=(train_imgs[:7], None)))
    assert "7 training images" in page.missing["sec-images"]
    assert "fig-pred-actual" in page.figures
    # a jobless store has no images of its own; images=False switches them off
    page = _parse(write_report(tmp_path / "none.html", store=path, datamodels=dm))
    assert "images=(train_images, target_images)" in page.missing["sec-images"]
    assert resolve_images(path, False) is None and resolve_images(path) is None


def test_sample_complexity_section(synth, tmp_path):
    path, ds, _, _ = synth
    sc = sample_complexity_from(evaluate_first(ds, (50, 100, 400)))
    assert sc["mse"].values[0] > sc["mse"].values[-1]  # more models, smaller error (planted)
    page = _parse(write_report(tmp_path / "r.html", store=path, sample_complexity=sc))
    assert "fig-sample-complexity" in page.figures
    assert "OPT floor" not in page.missing.get("sec-sample-complexity", "")
    page = _parse(write_report(tmp_path / "r2.html", store=path,
                               sample_complexity=sc.drop_vars("opt")))
    assert "No OPT floor" in page.figures["fig-sample-complexity"]["caption"]
    page = _parse(write_report(tmp_path / "r3.html", store=path,
                               sample_complexity=sc.rename(n_models="n")))
    assert "n_models" in page.missing["sec-sample-complexity"]


def first_models(ds: xr.Dataset, n: int) -> xr.Dataset:
    """The store restricted to its first ``n`` fitting (random) models, every other model
    kept: what a fit on n models sees, with the same held-out models to evaluate on."""
    kind = np.asarray(ds["kind"].values).astype(str)
    rnd = np.flatnonzero(kind == "random")
    keep = np.sort(np.concatenate([rnd[:n], np.flatnonzero(kind != "random")]))
    return ds.isel(model=keep)


def sample_complexity_from(evs: dict[int, xr.Dataset]) -> xr.Dataset:
    """The sample-complexity Dataset (dim ``n_models``) from real evaluations of datamodels
    fitted on the first n fitting models: their means over targets, and the OPT floor."""
    ns = sorted(evs)
    data = {k: ("n_models", [evs[n].attrs[f"{k}_mean"] for n in ns])
            for k in ("mse", "lds", "spearman", "r2")}
    data["mse_ci_low"] = ("n_models", [evs[n].attrs["mse_ci_low"] for n in ns])
    data["mse_ci_high"] = ("n_models", [evs[n].attrs["mse_ci_high"] for n in ns])
    data["opt"] = ((), float(evs[ns[-1]].attrs["opt_mean"]))
    return xr.Dataset(data, coords={"n_models": np.asarray(ns, np.int64)})


def evaluate_first(ds, ns, **fit_kw) -> dict[int, xr.Dataset]:
    """Fit datamodels on the first n fitting models for each n and evaluate each on the
    store's (same) held-out models."""
    return {n: dmdask.evaluate(ds, dmdask.fit_datamodels(first_models(ds, n), **fit_kw))
            for n in ns}


# --------------------------------------------------------------------------- digits store
DIGITS_TARGETS = np.arange(0, 500, 17)  # 30 of the 500 test digits: keeps the fits short


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A real digits store (DigitsMLP, small and fast settings), its datamodels, evaluation,
    a comparison of five estimators and a sample-complexity curve — all from real fits."""
    pytest.importorskip("torch")
    from dmdask.store.runstore import incomplete_blocks, read_meta
    from dmdask.train import train_block_task

    d = tmp_path_factory.mktemp("digits")
    p = dmdask.create_store(d / "runs.zarr", "jobs.digits:DigitsMLP", n_models=1000,
                            alpha=0.5, seed=0,
                            # one torch thread: on a shared 2-core machine two threads were
                            # 5x slower (1.8 s against 9.4 s for 512 models)
                            params={"hidden": 32, "epochs": 6, "threads": 1})
    held = dmdask.add_models(p, "heldout", n=100)
    dmdask.add_models(p, "replicate", replicate_of=held)
    spec = read_meta(p)["job"]
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(what: str) -> None:  # timings, printed with -s: where the fixture's time goes
        nonlocal t0
        times[what] = time.perf_counter() - t0
        t0 = time.perf_counter()

    for block in incomplete_blocks(p):  # the worker's own task, in process: no cluster start
        train_block_task(str(p), block, spec)
    lap("train 1,200 models")
    ds = dmdask.open_store(p)
    dm = dmdask.fit_datamodels(ds, targets=DIGITS_TARGETS, selection="holdout")
    dm_path = dmdask.save_datamodels(dm, d / "datamodels.zarr")
    ev = dmdask.evaluate(ds, dm)
    lap("fit + evaluate datamodels")
    rows = [("lasso", 1000, ev)]
    for name in ("dom_margin", "dom_correctness", "ols", "ridge"):
        scores = estimators.compute(ds, name, targets=DIGITS_TARGETS)
        rows.append((name, 1000, dmdask.evaluate(ds, scores)))
    cmp = comparison_from(rows)
    lap("comparison")
    # no n = 125: its LASSO paths converge slowly (12 s against 6 s for n = 250 here)
    evs = evaluate_first(ds, (250, 500), targets=DIGITS_TARGETS, selection="holdout")
    sc = sample_complexity_from({**evs, 1000: ev})  # the full fit is the curve's last point
    lap("sample complexity")
    out = write_report(d / "report.html", store=p, datamodels=dm_path, evaluation=ev,
                       comparison=cmp, sample_complexity=sc)
    lap("write_report")
    print("\ndigits fixture: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return {"path": p, "ds": ds, "dm": dm, "ev": ev, "cmp": cmp, "sc": sc, "out": out,
            "t_report": times["write_report"]}


@pytest.mark.slow
@pytest.mark.torch
def test_digits_report_has_every_figure(digits):
    page = _parse(digits["out"])
    assert set(page.figures) == set(FIGURE_IDS)
    # every section drawn but the counterfactual ones, which the fixture does not compute
    # (tests/test_counterfactual.py draws them)
    assert set(page.missing) == {"sec-counterfactuals", "sec-support", "sec-selection"}
    for fid, f in page.figures.items():
        w, h = _png_size(f["src"])
        assert w > 100 and h > 100, fid
        assert len(f["caption"]) > 40, fid
    assert page.tables["comparison-table"] == 5
    assert page.tables["images-table"] == 4
    assert page.tables["evaluation-table"] == 9
    text = digits["out"].read_text()
    assert "jobs.digits:DigitsMLP" in text and "heldout: 100 of 100 trained" in text
    # the datamodels have learnt something on a real store: the page reports it faithfully
    assert digits["ev"].attrs["lds_mean"] > 0.2
    assert f"{digits['ev'].attrs['lds_mean']:.3f}" in text
    assert digits["t_report"] < 30  # ~3 s here; generous for a loaded shared machine


@pytest.mark.slow
@pytest.mark.torch
def test_digits_images_are_the_jobs_digits(digits):
    from sklearn.datasets import load_digits

    from jobs.digits import load_split

    tr, tg, source = resolve_images(digits["path"])
    split = load_split()
    imgs = np.rint(load_digits().images * 255 / 16)  # the hook's uint8 scale of 0..16
    np.testing.assert_array_equal(tr, imgs[split.train_id])
    np.testing.assert_array_equal(tg, imgs[split.test_id])
    assert "jobs.digits:DigitsMLP" in source
    # the images' labels are the store's labels: the right digits were picked
    raw = load_digits().target
    np.testing.assert_array_equal(raw[split.train_id], digits["ds"].train_label.values)


# --------------------------------------------------------------------------- browser
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Injected only into a test copy of the page (the report itself has no scripts): after load,
# measure every figure and table and write the results into the DOM for --dump-dom.
CHECK_JS = """<script>
window.addEventListener('load', function () {
  var doc = document.documentElement, W = doc.scrollWidth, H = doc.scrollHeight;
  var figs = Array.prototype.map.call(document.querySelectorAll('figure'), function (f) {
    var img = f.querySelector('img'), cap = f.querySelector('figcaption');
    var st = getComputedStyle(f), ist = img ? getComputedStyle(img) : st;
    var hit = false;
    if (img) {
      img.scrollIntoView({block: 'center'});
      var v = img.getBoundingClientRect();
      hit = document.elementFromPoint(v.left + v.width / 2, v.top + v.height / 2) === img;
    }
    var r = (img || f).getBoundingClientRect();
    return {id: f.id, img: !!img, complete: img ? img.complete : false,
            naturalWidth: img ? img.naturalWidth : 0, naturalHeight: img ? img.naturalHeight : 0,
            left: r.left + window.scrollX, top: r.top + window.scrollY,
            width: r.width, height: r.height, hit: hit,
            display: st.display + '/' + ist.display, visibility: ist.visibility,
            opacity: Math.min(parseFloat(st.opacity), parseFloat(ist.opacity)),
            caption: cap ? cap.textContent.length : 0};
  });
  var tables = {};
  Array.prototype.forEach.call(document.querySelectorAll('table[id]'), function (t) {
    tables[t.id] = t.tBodies[0].rows.length;
  });
  var res = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  var out = document.createElement('pre');
  out.id = 'report-check';
  out.textContent = JSON.stringify({figures: figs, tables: tables, resources: res,
                                    width: W, height: H});
  document.body.appendChild(out);
});
</script>"""


def _run_chromium(args: list[str], profile: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args]
    # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.torch
def test_report_renders_in_headless_chromium(digits, tmp_path):
    page = Path(digits["out"]).read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_JS + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        r = _run_chromium(["--window-size=1280,1600", "--virtual-time-budget=15000",
                           "--dump-dom", probe.as_uri()], profile)
    m = re.search(r'<pre id="report-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no check results in the dumped DOM (rc {r.returncode}): {r.stderr[-2000:]}"
    res = json.loads(html.unescape(m.group(1)))
    figs = {f["id"]: f for f in res["figures"]}
    assert set(figs) == set(FIGURE_IDS)
    for fid, f in figs.items():
        assert f["img"] and f["complete"], fid
        assert f["naturalWidth"] > 0 and f["naturalHeight"] > 0, fid
        assert f["width"] > 100 and f["height"] > 100, (fid, f)
        assert f["left"] >= 0 and f["top"] >= 0, (fid, f)
        assert f["left"] + f["width"] <= res["width"] + 0.5, (fid, f)  # no sideways overflow
        assert f["top"] + f["height"] <= res["height"] + 0.5, (fid, f)
        assert f["display"] == "block/block" and f["visibility"] == "visible", (fid, f)
        assert f["opacity"] == 1 and f["hit"], (fid, f)  # nothing covers the image
        assert f["caption"] > 40, fid
    assert res["tables"]["comparison-table"] == 5 and res["tables"]["images-table"] == 4
    # no network: data: URIs are not resource fetches, so nothing at all was requested
    assert [u for u in res["resources"] if not u.startswith("data:")] == []

    # the screenshot is of the report itself (no probe script), at its full height
    shot = tmp_path / "report.png"
    height = int(min(res["height"], 16000))
    with tempfile.TemporaryDirectory() as profile:
        r = _run_chromium([f"--window-size=1280,{height}", "--virtual-time-budget=5000",
                           f"--screenshot={shot}", Path(digits["out"]).as_uri()], profile)
    assert shot.exists(), r.stderr[-2000:]
    from matplotlib.image import imread

    png = imread(shot)
    assert png.shape[1] == 1280 and png.shape[0] == height
    assert png[..., :3].std() > 0.05  # not a blank page
    print(f"\nscreenshot: {shot}")


# --------------------------------------------------------------------------- the report knows no job
def _weights_dm(ds: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """Datamodels-shaped weights for every target of ``ds`` (sparse, both signs): the images
    section draws from the weights only, so no fit is needed to test where images come from."""
    rng = np.random.default_rng(seed)
    T, N = ds.sizes["target"], ds.sizes["train"]
    W = rng.standard_normal((T, N)) * (rng.random((T, N)) < 0.3)
    return xr.Dataset({"weight": (("target", "train"), W), "bias": ("target", np.zeros(T))},
                      coords={"target": np.arange(T)})


def test_no_dmdask_module_imports_jobs():
    """dmdask knows no job: jobs are reached only by the import path a store names."""
    import ast

    root = Path(dmdask.__file__).parent
    bad = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{f.relative_to(root)}:{node.lineno} imports {n}" for n in names
                    if n == "jobs" or n.startswith("jobs.")]
    assert not bad, bad


def test_digits_images_come_from_the_jobs_examples_hook(tmp_path):
    from sklearn.datasets import load_digits

    from dmdask.report.images import image_source

    p = dmdask.create_store(tmp_path / "d.zarr", "jobs.digits:DigitsMLP", n_models=4,
                            alpha=0.5, params={"train_targets": 3})
    ds = dmdask.open_store(p)
    src, note = image_source(p)
    assert src is not None, note
    raw = load_digits().images  # 0..16, indexed by the ids the store recorded
    idx = np.array([0, 5, ds.sizes["train"] - 1])
    np.testing.assert_array_equal(src.get("train", idx),
                                  np.rint(raw[ds.train_id.values[idx]] * 255 / 16))
    tidx = np.array([0, 499, 500, 502])  # test digits, then training examples as targets
    got = src.get("target", tidx)
    assert got.dtype == np.uint8 and got.shape == (4, 8, 8)
    np.testing.assert_array_equal(got, np.rint(raw[ds.target_id.values[tidx]] * 255 / 16))
    page = _parse(write_report(tmp_path / "r.html", store=p, datamodels=_weights_dm(ds)))
    assert "fig-images" in page.figures
    assert "examples()" in page.figures["fig-images"]["caption"]


def _tiny_cifar_params(**kw):
    return {"width": 1 / 16, "epochs": 1, "batch_size": 8, "threads": 1, "device": "cpu", **kw}


def test_cifar10_images_come_from_the_jobs_examples_hook(tmp_path):
    from dmdask.report.images import image_source
    from jobs._cifar_data import synthetic_cifar

    syn = {"n_train": 40, "n_test": 12, "seed": 0}
    p = dmdask.create_store(tmp_path / "c.zarr", "jobs.cifar10:CIFAR10ResNet9", n_models=4,
                            alpha=0.5, params=_tiny_cifar_params(synthetic=syn))
    xtr, _, xte, _ = synthetic_cifar(**syn)  # [n, 3, 32, 32]: channels first
    src, note = image_source(p)
    assert src is not None, note
    np.testing.assert_array_equal(src.get("train", np.array([3, 7])),
                                  xtr[[3, 7]].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(src.get("target", np.array([0, 11])),
                                  xte[[0, 11]].transpose(0, 2, 3, 1))
    ds = dmdask.open_store(p)
    page = _parse(write_report(tmp_path / "r.html", store=p, datamodels=_weights_dm(ds)))
    assert "fig-images" in page.figures


def test_images_note_when_the_job_cannot_show_them(tmp_path):
    """A job without the hook, and a job whose data is gone from this machine: the images
    section says why, the rest of the page is drawn."""
    from jobs._cifar_data import synthetic_cifar, write_cifar10_batches

    p = dmdask.create_store(tmp_path / "r.zarr", "testjobs:RidgeDigits", n_models=4, alpha=0.5,
                            params={"n_train": 30, "n_target": 5})
    page = _parse(write_report(tmp_path / "r.html", store=p,
                               datamodels=_weights_dm(dmdask.open_store(p))))
    assert "no examples(which, index) method" in page.missing["sec-images"]
    data = tmp_path / "cifar"
    write_cifar10_batches(str(data), *synthetic_cifar(n_train=20, n_test=5))
    p = dmdask.create_store(tmp_path / "c.zarr", "jobs.cifar10:CIFAR10ResNet9", n_models=4,
                            alpha=0.5, params=_tiny_cifar_params(data_dir=str(data)))
    shutil.rmtree(data)
    page = _parse(write_report(tmp_path / "c.html", store=p,
                               datamodels=_weights_dm(dmdask.open_store(p))))
    assert "cannot be constructed here (FileNotFoundError" in page.missing["sec-images"]
    assert "fig-images" not in page.figures


def test_cli_report_on_a_madrylab_store_without_heldout_models(tmp_path):
    """`dmdask report` on an imported store (no job, no held-out models): the datamodels are
    fitted and drawn, every section that needs held-out models or images says why not."""
    from click.testing import CliRunner

    from dmdask.cli import main

    rng = np.random.default_rng(0)
    n, N = 160, 12
    masks = rng.random((n, N)) < 0.5
    margins = (masks[:, :3].astype(np.float32) - masks[:, 3:6]
               + 0.1 * rng.standard_normal((n, 3)).astype(np.float32))
    src = tmp_path / "madry"
    src.mkdir()
    np.save(src / "masks.npy", masks)
    np.save(src / "margins.npy", margins)
    np.save(src / "_completed.npy", np.ones(n, bool))
    store = dmdask.import_madrylab(src, tmp_path / "s.zarr", alpha=0.5, progress=False)
    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", str(store), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    page = _parse(out)
    assert set(page.figures) == {"fig-lambda-path"}
    for sec in ("sec-pred-actual", "sec-evaluation", "sec-comparison",
                "sec-sample-complexity"):
        assert "held-out models" in page.missing[sec], sec
    assert "has no job" in page.missing["sec-images"]
