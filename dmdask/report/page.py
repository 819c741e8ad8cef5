"""``write_report``: one self-contained HTML page about a run store and its datamodels (issue 5).

The page has a header (store path, job, models by kind, dmdask version, date) and one section
per analysis; each section draws what its input allows and otherwise says what is missing and
how to produce it, so a page made from a bare store is still a valid page:

* **predicted vs actual** margins on the held-out runs (``datamodels`` + ``store``): the
  datamodels' prediction ``mask @ weightᵀ + bias`` of every held-out model's subset against
  every run's margin, and against the margin averaged over the subset's runs (computed here by
  :func:`predicted_vs_actual` with :func:`dmdask.evaluate.evaluation_runs`);
* **evaluation** (``evaluation``, the Dataset :func:`dmdask.evaluate` returns): headline
  metrics with their confidence intervals and the OPT floor, histograms of the per-target LDS,
  Spearman and Pearson correlations;
* **estimator comparison** (``comparison``, a Dataset with dim ``row``, e.g. from
  ``dmdask.compare``): a Table 5 style HTML table and the per-target LDS of every row;
* **sample complexity** (``sample_complexity``, a Dataset with dim ``n_models``): MSE against
  the number of models with the OPT noise floor, LDS and Spearman against it;
* **λ path** (``datamodels``): validation MSE along each example target's λ path, normalised by
  its minimum, with the chosen λ marked;
* **training images**: for ``n_examples`` targets the target image and the training images
  with the largest positive and negative weights, their weights and labels. The images come
  from ``images=`` or from the store's job, through its optional ``examples(which, index)``
  hook (:mod:`dmdask.report.images`); dmdask itself knows no job.

A store without held-out models, or imported without a job (the MadryLab layout), gets a page
all the same: the sections it cannot draw say why and how to get them.

Self-contained: figures are inline base64 PNGs, CSS is inline, there are no scripts and no
external requests, so the file can be mailed, archived or opened offline.

Plotting library: matplotlib — it is already dmdask's ``viz`` extra and its Agg backend
rasterises headless to static PNGs with no JavaScript runtime, whereas interactive libraries
(plotly, bokeh, altair) would inline megabytes of JavaScript or load it from a CDN.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import DmdaskError, InputError
from .html import (
    _esc,
    _figure,
    _fmt,
    _horizontal,
    _malformed,
    _missing,
    _new_fig,
    _no_minor_labels,
    _section,
    show_image,
)
from .images import ImagesArg, resolve_images, usable_images
from .inputs import store_and_path as _open_store

__all__ = [
    "COUNTERFACTUAL_FIGURE_IDS",
    "FIGURE_IDS",
    "PredictedActual",
    "predicted_vs_actual",
    "render_report",
    "resolve_images",
    "write_report",
]

# Every figure the page can hold, by section; a figure whose input is missing is left out.
FIGURE_IDS = ("fig-pred-actual", "fig-eval-hist", "fig-comparison-lds",
              "fig-sample-complexity", "fig-lambda-path", "fig-images")
# ... and of the counterfactual analyses (dmdask.report.counterfactual)
COUNTERFACTUAL_FIGURE_IDS = ("fig-counterfactuals", "fig-support", "fig-mislabel",
                             "fig-selection")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1b1f24;background:#fff;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5em 1.5em 4em}
h1{font-size:1.7em;margin:.2em 0 .4em}h2{font-size:1.3em;margin:1.8em 0 .5em;
 border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}
th{background:#f3f5f7}td.l,th.l{text-align:left}
tr.calibrated td{background:#fff8e6}
figure{margin:1em 0;padding:0}figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em;max-width:60em}
.missing{background:#fff4f4;border-left:4px solid #d1242f;padding:.5em .8em}
.note{color:#555;font-size:.9em}code{background:#f3f5f7;padding:0 .25em;border-radius:3px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
"""


# --------------------------------------------------------------------------- inputs


def _open_datamodels(dm) -> xr.Dataset | None:
    if dm is None:
        return None
    if not isinstance(dm, xr.Dataset):
        p = os.fspath(dm)
        if not os.path.exists(p):
            raise InputError(f"{p}: no such datamodels store")
        dm = xr.open_zarr(p, consolidated=False)
    missing = [v for v in ("weight", "bias") if v not in dm]
    if missing:
        raise InputError(f"not a datamodels Dataset: no {', '.join(missing)} variable "
                         "(expected the output of dmdask.fit_datamodels)")
    return dm


def _job_of(ds: xr.Dataset | None) -> dict | None:
    if ds is None:
        return None
    meta = ds.attrs.get("dmdask", {})
    job = meta.get("job") if isinstance(meta, dict) else None
    return job if isinstance(job, dict) else None


@dataclass
class PredictedActual:
    """Datamodel predictions against held-out margins (see :func:`predicted_vs_actual`).

    ``pred``/``actual``: a deterministic subsample of the (run, target) pairs; ``pred_mean``/
    ``actual_mean``: the same for (subset, target) pairs with the margin averaged over the
    subset's runs. The statistics are over *all* pairs, not the subsample.
    """

    pred: np.ndarray
    actual: np.ndarray
    pred_mean: np.ndarray
    actual_mean: np.ndarray
    n_pairs: int
    n_subsets: int
    n_runs: int
    n_targets: int
    pearson: float
    mse: float
    pearson_mean: float


def _pooled_pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def predicted_vs_actual(store, datamodels, *, max_points: int = 5000,
                        seed: int = 0) -> PredictedActual:
    """Predict every held-out subset's margins with the datamodels and pair them with the
    margins of the subset's runs (the held-out model and its replicates,
    :func:`dmdask.evaluate.evaluation_runs`).

    Prediction = ``mask @ weightᵀ + bias`` in raw-mask space, unchanged (no calibration: this
    is what the datamodels themselves claim). NaN margins are dropped. At most ``max_points``
    pairs of each kind are kept for plotting, drawn without replacement by
    ``numpy.random.default_rng(seed)`` so the page is reproducible.
    """
    from ..analysis.evaluate import evaluation_runs
    from ..analysis.metrics import group_means

    ds, _ = _open_store(store)
    dm = _open_datamodels(datamodels)
    if ds is None or dm is None:
        raise InputError("predicted_vs_actual needs both a run store and datamodels")
    if dm.sizes["train"] != ds.sizes["train"]:
        raise InputError(f"the datamodels have {dm.sizes['train']} training columns, the store "
                         f"{ds.sizes['train']}: they belong to another store")
    tpos = np.asarray(dm["target"].values, dtype=np.int64)
    if tpos.size == 0 or tpos.min() < 0 or tpos.max() >= ds.sizes["target"]:
        raise InputError(f"the datamodels name targets outside the store's "
                         f"[0, {ds.sizes['target']})")
    subsets, runs, group = evaluation_runs(ds)
    b = np.asarray(dm["bias"].values, np.float64)
    X = np.asarray(ds["mask"].data[subsets].compute(), np.float64)
    # by blocks of targets: the weight matrix is never whole in memory
    Wt = dm["weight"].transpose("target", "train")
    pred_sub = np.empty((subsets.size, tpos.size))  # [subset, target]
    step = max(1, int(Wt.chunks[0][0]) if Wt.chunks else 1024)
    for t0 in range(0, tpos.size, step):
        Wb = np.asarray(Wt.isel(target=slice(t0, t0 + step)).values, np.float64)
        pred_sub[:, t0:t0 + Wb.shape[0]] = X @ Wb.T + b[t0:t0 + Wb.shape[0]]
    y = np.asarray(ds["margin"].data[runs][:, tpos].compute(), np.float64)  # [run, target]
    g = pred_sub[group]
    ok = np.isfinite(y)
    p_all, a_all = g[ok], y[ok]
    _, fbar, cnt = group_means(y, group)
    okm = (cnt > 0) & np.isfinite(fbar)
    pm_all, am_all = pred_sub[okm], fbar[okm]
    keep = _subsample(p_all.size, max_points, seed)
    keep_m = _subsample(pm_all.size, max_points, seed + 1)
    return PredictedActual(
        pred=p_all[keep], actual=a_all[keep], pred_mean=pm_all[keep_m],
        actual_mean=am_all[keep_m], n_pairs=int(p_all.size), n_subsets=int(subsets.size),
        n_runs=int(runs.size), n_targets=int(tpos.size),
        pearson=_pooled_pearson(p_all, a_all),
        mse=float(np.mean((p_all - a_all) ** 2)) if p_all.size else float("nan"),
        pearson_mean=_pooled_pearson(pm_all, am_all))


# --------------------------------------------------------------------------- sections
def _header(ds, path, dm, title: str) -> str:
    from ..version import __version__

    rows = [("store", _esc(path) if path else "— (no run store given)")]
    job = _job_of(ds)
    if ds is not None:
        if job is None:
            rows.append(("job", "none (imported or synthetic runs)"))
        else:
            params = job.get("params") or {}
            ptxt = ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
            rows.append(("job", f"<code>{_esc(job.get('path'))}</code>"
                         + (f" ({_esc(ptxt)})" if ptxt else "")))
        kind = np.asarray(ds["kind"].values).astype(str)
        done = np.asarray(ds["completed"].values).astype(bool)
        parts = []
        from ..store.runstore import KINDS

        # dmdask's own order of kinds (random first), then any others
        for k in [k for k in KINDS if k in kind] + sorted(set(kind) - set(KINDS)):
            sel = kind == k
            parts.append(f"{_esc(k)}: {int(done[sel].sum()):,} of {int(sel.sum()):,} trained")
        rows.append(("models", "; ".join(parts) if parts else "none"))
        rows.append(("examples", f"{ds.sizes['train']:,} training, "
                                 f"{ds.sizes['target']:,} targets"))
    if dm is not None:
        a = dm.attrs
        nm = a.get("n_models", "?")
        nm = f"{nm:,}" if isinstance(nm, (int, np.integer)) else nm
        rows.append(("datamodels", f"{dm.sizes['target']:,} targets, fitted on "
                     f"{_esc(nm)} models (α = {_esc(a.get('alpha', '?'))}, "
                     f"λ selection: {_esc(a.get('selection', '?'))})"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows.append(("dmdask", _esc(__version__)))
    rows.append(("generated", now))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<header><h1>{_esc(title)}</h1><dl class="meta">{dl}</dl></header>'


def _sec_pred_actual(ds, dm) -> str:
    how = ("Fit them with <code>dmdask fit STORE --out datamodels.zarr</code> (or "
           "<code>dmdask.fit_datamodels</code>) and pass <code>datamodels=</code>.")
    if ds is None:
        return _missing("No run store given: the held-out margins live in the store.")
    if dm is None:
        return _missing("No datamodels given. " + how)
    try:
        pa = predicted_vs_actual(ds, dm)
    except InputError as e:
        return _missing(_esc(e) + " — add held-out models with <code>dmdask add STORE --kind "
                        "heldout -n 500</code> (and <code>--kind replicate --of heldout</code>) "
                        "and train them." if "held-out" in str(e) else _esc(e))
    fig = _new_fig(10, 4.6)
    axes = fig.subplots(1, 2)
    for ax, p, a, what, r in ((axes[0], pa.pred, pa.actual, "margin of each run",
                               pa.pearson),
                              (axes[1], pa.pred_mean, pa.actual_mean,
                               "margin averaged over the subset's runs", pa.pearson_mean)):
        ax.scatter(p, a, s=4, alpha=0.35, color="#1f6feb", edgecolors="none", rasterized=True)
        if p.size:
            lo = float(min(np.min(p), np.min(a)))
            hi = float(max(np.max(p), np.max(a)))
            ax.plot([lo, hi], [lo, hi], color="#d1242f", lw=1, label="y = x")
            ax.legend(loc="upper left", frameon=False)
        ax.set_xlabel("datamodel prediction  mask·w + b")
        ax.set_ylabel(what)
        ax.set_title(f"pooled Pearson r = {r:.3f}", fontsize=10)
    cap = (f"Datamodel predictions against actual margins on the {pa.n_subsets:,} held-out "
           f"subsets ({pa.n_runs:,} runs with replicates) for {pa.n_targets:,} targets: "
           f"{pa.n_pairs:,} (run, target) pairs, MSE {pa.mse:.3f}; "
           f"{pa.pred.size:,} pairs are drawn (deterministic subsample). Left: each run; "
           "right: the margin averaged over the subset's runs (the replicate noise averages out).")
    return _figure("fig-pred-actual", fig, cap, "scatter of predicted against actual margins")


_HEADLINE = (("lds", "LDS"), ("spearman", "Spearman"), ("pearson", "Pearson"),
             ("r2", "R²"), ("r2_noise_adjusted", "R² (noise-adjusted)"), ("mse", "MSE"),
             ("opt", "OPT (noise floor)"), ("excess_mse", "MSE − OPT"), ("auc", "AUC"))


def _sec_evaluation(ev) -> str:
    if ev is None:
        return _missing("No evaluation given. Compute it with <code>ev = dmdask.evaluate(STORE, "
                        "datamodels)</code> and pass <code>evaluation=ev</code>.")
    a = ev.attrs
    rows = []
    for key, name in _HEADLINE:
        if f"{key}_mean" not in a:
            continue
        rows.append(f"<tr><td class='l'>{name}</td><td>{_fmt(a[f'{key}_mean'])}</td>"
                    f"<td>{_fmt(a.get(f'{key}_ci_low'))}</td>"
                    f"<td>{_fmt(a.get(f'{key}_ci_high'))}</td>"
                    f"<td>{_esc(a.get(f'{key}_n_used', ''))}</td></tr>")
    level = float(a.get("ci_level", 0.95))
    table = ("<table id='evaluation-table'><thead><tr><th class='l'>metric</th><th>mean over "
             f"targets</th><th colspan='2'>{level:.0%} CI</th><th>targets</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>") if rows else ""
    info = (f"<p class='note'>Estimator <code>{_esc(a.get('estimator', '?'))}</code>; "
            f"{_esc(a.get('n_heldout_subsets', '?'))} held-out subsets, "
            f"{_esc(a.get('n_heldout_runs', '?'))} runs; calibration: "
            f"{_esc(a.get('calibration', '?'))}; CI: {_esc(a.get('ci_method', '?'))}.</p>")
    present = [k for k in ("lds", "spearman", "pearson") if k in ev]
    if not present:
        return table + info + _missing("The evaluation has none of the per-target variables "
                                       "lds, spearman, pearson to draw.")
    fig = _new_fig(3.4 * len(present), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(present)))
    for ax, k in zip(axes, present, strict=True):
        v = np.asarray(ev[k].values, np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(30, max(5, v.size // 3)), color="#8250df", alpha=0.8)
            ax.axvline(float(v.mean()), color="k", lw=1, ls="--", label=f"mean {v.mean():.3f}")
            ax.legend(frameon=False, fontsize=8)
        ax.set_xlabel({"lds": "LDS"}.get(k, k.capitalize()) + " per target")
        ax.set_ylabel("targets")
    cap = ("Per-target LDS (Spearman over held-out subsets between the summed scores and the "
           "replicate-mean margin), Spearman and Pearson correlation of the predictions with "
           "each run's margin; dashed: the mean over targets.")
    return table + info + _figure("fig-eval-hist", fig, cap, "histograms of per-target "
                                                             "correlations")


_CMP_REQUIRED = ("spearman", "mse", "auc", "lds", "lds_ci_low", "lds_ci_high")


def _sec_comparison(cmp) -> str:
    if cmp is None:
        return _missing("No estimator comparison given. Evaluate several estimators on the same "
                        "held-out models (<code>dmdask.evaluate(STORE, "
                        "dmdask.analysis.estimators.compute(STORE, name))</code> for dom_margin, "
                        "dom_correctness, ols, ridge and the datamodels, or "
                        "<code>dmdask.compare</code>) and pass <code>comparison=</code>.")
    bad = _malformed(cmp, "row", _CMP_REQUIRED, "comparison")
    if bad:
        return bad
    n = cmp.sizes["row"]

    def col(name, default=""):
        if name in cmp.variables:
            return [v.item() if hasattr(v, "item") else v for v in np.asarray(cmp[name].values)]
        return [default] * n

    est, nm, out = col("estimator", "?"), col("n_models", ""), col("output", "")
    cal = [bool(c) for c in col("calibrated", False)]
    body = []
    for i in range(n):
        r = cmp.isel(row=i)
        half = (float(r.lds_ci_high) - float(r.lds_ci_low)) / 2
        star = "*" if cal[i] else ""
        cells = [f"<td class='l'>{_esc(est[i])}</td>",
                 f"<td>{int(nm[i]):,}</td>" if nm[i] != "" else "<td>—</td>",
                 f"<td class='l'>{_esc(out[i])}</td>",
                 f"<td>{_fmt(r.spearman)}</td>",
                 f"<td>{_fmt(r.pearson) if 'pearson' in cmp else '—'}</td>",
                 f"<td>{_fmt(r.mse)}{star}</td>",
                 f"<td>{_fmt(r.auc)}{star}</td>",
                 f"<td>{_fmt(r.r2) if 'r2' in cmp else '—'}{star if 'r2' in cmp else ''}</td>",
                 f"<td>{_fmt(r.lds)} ± {_fmt(half)}</td>"]
        cls = " class='calibrated'" if cal[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    level = float(cmp.attrs.get("ci_level", 0.95))
    head = ("<tr><th class='l'>estimator</th><th># models</th><th class='l'>output</th>"
            "<th>Spearman</th><th>Pearson</th><th>MSE</th><th>AUC</th><th>R²</th>"
            f"<th>LDS ± {level:.0%} CI</th></tr>")
    opt = cmp.attrs.get("opt_mean")
    note = ("<p class='note'>* calibrated: MSE and R² are scored after the best per-target "
            "affine map with a non-negative slope, fitted on the row's own number of fitting "
            "models (the estimator has no bias); Spearman, Pearson, AUC and LDS are always "
            "computed on the raw predictions."
            + (f" OPT noise floor (MSE): {_fmt(opt)}." if opt is not None else "") + "</p>")
    table = (f"<table id='comparison-table'><thead>{head}</thead><tbody>{''.join(body)}"
             f"</tbody></table>{note}")
    labels = [f"{est[i]} ({int(nm[i]):,})" if nm[i] != "" else str(est[i]) for i in range(n)]
    fig = _new_fig(8, 1.2 + 0.45 * n)
    ax = fig.subplots()
    if "lds_target" in cmp:
        data = [np.asarray(cmp["lds_target"].isel(row=i).values, np.float64) for i in range(n)]
        data = [d[np.isfinite(d)] for d in data]
        pos = np.arange(1, n + 1)
        ax.boxplot([d if d.size else [np.nan] for d in data], positions=pos, showmeans=True,
                   meanprops={"marker": "D", "markerfacecolor": "#d1242f",
                              "markeredgecolor": "#d1242f", "markersize": 4},
                   **_horizontal())
        ax.set_yticks(pos, labels)
        what = "per-target LDS (box: quartiles, whiskers 1.5 IQR, diamond: mean)"
    else:  # means with their CI only
        y = np.arange(n)
        m = np.asarray(cmp["lds"].values, np.float64)
        lo, hi = np.asarray(cmp["lds_ci_low"].values), np.asarray(cmp["lds_ci_high"].values)
        ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="D", color="#d1242f", capsize=3)
        ax.set_yticks(y, labels)
        what = "mean LDS with its CI (no per-target lds_target in the comparison)"
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel("LDS")
    ax.grid(axis="x", alpha=0.3)
    cap = f"LDS of every estimator in the table: {what}."
    return table + _figure("fig-comparison-lds", fig, cap, "LDS per estimator")


_SC_REQUIRED = ("mse", "lds", "spearman")


def _sec_sample_complexity(sc) -> str:
    if sc is None:
        return _missing("No sample-complexity results given. Compute them with "
                        "<code>dmdask sample-complexity STORE --out sc.zarr</code> (or "
                        "<code>dmdask.analysis.complexity.sample_complexity(STORE)</code>) and pass "
                        "<code>sample_complexity=</code>.")
    bad = _malformed(sc, "n_models", _SC_REQUIRED, "sample-complexity Dataset")
    if bad:
        return bad
    sc = sc.sortby("n_models")
    n = np.asarray(sc["n_models"].values, np.float64)
    fig = _new_fig(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    # one curve per estimator when the Dataset has an estimator dim (dmdask.analysis.complexity)
    ests = ([str(e) for e in sc["estimator"].values] if "estimator" in sc.dims else [None])
    colors = ("#1f6feb", "#bc4c00", "#1a7f37", "#8250df", "#9a6700")
    for k, est in enumerate(ests):
        sub = sc.sel(estimator=est) if est is not None else sc
        c = colors[k % len(colors)]
        name = f"{est} " if est is not None else ""
        ax1.plot(n, np.asarray(sub["mse"].values, np.float64), "o-", color=c,
                 label=f"{name}MSE (mean over targets)")
        if "mse_ci_low" in sub and "mse_ci_high" in sub:
            ax1.fill_between(n, sub["mse_ci_low"].values, sub["mse_ci_high"].values,
                             color=c, alpha=0.2, lw=0)
        if est is None:
            for key, cc in (("lds", "#8250df"), ("spearman", "#1a7f37"), ("r2", "#9a6700")):
                if key in sub:
                    ax2.plot(n, np.asarray(sub[key].values, np.float64), "o-", color=cc,
                             label={"lds": "LDS", "r2": "R²"}.get(key, key.capitalize()))
        else:
            ax2.plot(n, np.asarray(sub["lds"].values, np.float64), "o-", color=c,
                     label=f"{est} LDS")
            if "spearman" in sub:
                ax2.plot(n, np.asarray(sub["spearman"].values, np.float64), "s--", color=c,
                         alpha=0.7, label=f"{est} Spearman")
    opt = float(sc["opt"].values) if "opt" in sc and sc["opt"].ndim == 0 else float("nan")
    if np.isfinite(opt):
        ax1.axhline(opt, color="#d1242f", ls="--", lw=1.2, label=f"OPT floor {opt:.3f}")
    ax1.set_xlabel("models used to fit")
    ax1.set_ylabel("held-out MSE")
    ax1.legend(frameon=False, fontsize=8)
    for ax in (ax1, ax2):  # log x, ticked at the measured sizes only (minor labels clutter)
        ax.set_xscale("log")
        ax.set_xticks(n, [f"{int(v):,}" for v in n])
        ax.minorticks_off()
    ax2.set_xlabel("models used to fit")
    ax2.set_ylabel("mean over targets")
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(alpha=0.3)
    cap = ("Sample complexity: held-out MSE against the number of fitting models (log scale), "
           "with its CI over targets and the OPT noise floor — the error no predictor of the "
           "margin from the subset alone can beat, since replicates of one subset differ by "
           "that much — and LDS/Spearman (and R²) against the number of models."
           + ("" if np.isfinite(opt) else " No OPT floor was given (needs replicate runs)."))
    return _figure("fig-sample-complexity", fig, cap, "sample-complexity curves")


def _example_targets(n_target: int, k: int) -> np.ndarray:
    """``k`` target positions evenly spread over the datamodels' targets: deterministic and
    not selected by quality, so the examples are not cherry-picked."""
    if n_target == 0 or k <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n_target - 1, min(k, n_target)).round().astype(np.int64))


def _sec_lambda_path(dm, n_examples: int) -> str:
    if dm is None:
        return _missing("No datamodels given: the λ path and its validation error come from "
                        "<code>dmdask fit STORE --out datamodels.zarr</code>.")
    if "lambdas" not in dm or "val_mse_path" not in dm:
        return _missing("The datamodels have no λ path (variables lambdas, val_mse_path).")
    lam = np.asarray(dm["lambdas"].values, np.float64)
    vp = np.asarray(dm["val_mse_path"].values, np.float64)
    chosen = np.asarray(dm["lam"].values, np.float64) if "lam" in dm else None
    picks = [t for t in _example_targets(dm.sizes["target"], max(n_examples, 6))
             if (np.isfinite(lam[t]) & np.isfinite(vp[t])).sum() >= 2]
    if not picks:
        return _missing("No target has a validation curve along its λ path.")
    fig = _new_fig(7.5, 4.2)
    ax = fig.subplots()
    tnames = np.asarray(dm["target"].values)
    labs = np.asarray(dm["target_label"].values) if "target_label" in dm.coords else None
    for i, t in enumerate(picks):
        ok = np.isfinite(lam[t]) & np.isfinite(vp[t])
        x, y = lam[t][ok], vp[t][ok] / np.min(vp[t][ok])
        lab = f"target {tnames[t]}" + (f" (label {labs[t]})" if labs is not None else "")
        (line,) = ax.plot(x, y, "-", lw=1.3, label=lab, color=f"C{i % 10}")
        if chosen is not None and np.isfinite(chosen[t]):
            j = int(np.argmin(np.abs(np.log(x) - np.log(chosen[t]))))
            ax.plot(x[j], y[j], "o", ms=7, mfc="none", mec=line.get_color(), mew=1.6)
    ax.set_xscale("log")
    _no_minor_labels(ax)
    ax.set_xlabel("λ (standardised features)")
    ax.set_ylabel("validation MSE / its minimum")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    sel = dm.attrs.get("selection", "?")
    cap = (f"Validation error along the λ path ({_esc(sel)} selection) for {len(picks)} targets "
           "spread over the datamodels, each divided by its minimum; circles mark the chosen λ. "
           "Paths that stop early were cut by the validation early stop.")
    return _figure("fig-lambda-path", fig, cap, "validation curves along the lambda path")



def _sec_images(ds, dm, images: ImagesArg, n_examples: int, top_k: int) -> str:
    if images is False:
        return _missing("Images were switched off (<code>images=False</code>).")
    if dm is None:
        return _missing("No datamodels given: the images shown are those with the largest "
                        "datamodel weights.")
    src, note = usable_images(ds, images, n_train=dm.sizes["train"])
    if src is None:
        return _missing(note)
    tnames = np.asarray(dm["target"].values, np.int64)
    picks = _example_targets(dm.sizes["target"], n_examples)
    # only the rows shown are read (a lazy, blockwise-written weight matrix stays on disk)
    Wp = np.asarray(dm["weight"].transpose("target", "train").isel(target=picks).values,
                    np.float64)
    W = dict(zip(picks.tolist(), Wp, strict=True))
    tlab = np.asarray(dm["target_label"].values) if "target_label" in dm.coords else None
    trlab = np.asarray(dm["train_label"].values) if "train_label" in dm.coords else None
    tops = []
    for t in picks:
        order = np.argsort(-W[t], kind="stable")
        tops.append(([j for j in order[:top_k] if W[t][j] > 0],
                     [j for j in order[::-1][:top_k] if W[t][j] < 0]))
    # only the images drawn are asked for: a job may hold tens of thousands
    need = np.unique(np.array([j for p, n in tops for j in p + n], np.int64))
    try:
        got = src.get("train", need) if need.size else None
        tr_img = {int(j): got[i] for i, j in enumerate(need)}
        tg_img = (None if src.n_target is None
                  else dict(zip(tnames[picks].tolist(), src.get("target", tnames[picks]),
                                strict=True)))
    except Exception as e:  # noqa: BLE001 - the job's own code: its failure is a note
        return _missing(f"The images could not be read from {_esc(src.source)} "
                        f"({_esc(type(e).__name__)}: {_esc(e)}).")
    ncol = 1 + 2 * top_k
    fig = _new_fig(1.05 * ncol + 0.4, 1.45 * picks.size)
    axes = np.atleast_2d(fig.subplots(picks.size, ncol))
    rows = []
    for r, (t, (pos, neg)) in enumerate(zip(picks, tops, strict=True)):
        w = W[t]
        ax = axes[r, 0]
        if tg_img is not None:
            show_image(ax, tg_img[int(tnames[t])])
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"target {tnames[t]}" + (f"\nlabel {tlab[t]}" if tlab is not None else ""),
                     fontsize=8, color="#0b3d91")
        for c, js in ((1, pos), (1 + top_k, neg)):
            for i in range(top_k):
                ax = axes[r, c + i]
                if i >= len(js):
                    ax.axis("off")
                    continue
                j = js[i]
                show_image(ax, tr_img[int(j)])
                lab = f"\nlabel {trlab[j]}" if trlab is not None else ""
                ax.set_title(f"{w[j]:+.3f}{lab}", fontsize=8,
                             color="#1a7f37" if w[j] > 0 else "#d1242f")

        def cells(js, w=w):
            return ", ".join(f"{j} ({w[j]:+.3f})" for j in js) or "—"

        rows.append(f"<tr><td>{tnames[t]}</td><td>{_esc(tlab[t]) if tlab is not None else '—'}"
                    f"</td><td class='l'>{cells(pos)}</td><td class='l'>{cells(neg)}</td></tr>")
    table = ("<table id='images-table'><thead><tr><th>target</th><th>label</th>"
             "<th class='l'>largest positive weights: train (weight)</th>"
             "<th class='l'>largest negative weights: train (weight)</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    cap = (f"For {picks.size} targets spread over the datamodels (first column), the "
           f"{top_k} training images with the largest positive weights (green: their presence "
           f"raises the target's margin) and the {top_k} with the largest negative weights "
           "(red), titled by weight and label. Fewer are shown where the LASSO kept fewer "
           f"non-zero weights. Images: {_esc(src.source)}.")
    return _figure("fig-images", fig, cap, "training images with the largest weights") + table


# --------------------------------------------------------------------------- page
# (section id, title, module of dmdask.report, function, render_report argument): the function
# takes (Dataset, store Dataset or None, images argument) and returns the section's HTML.
SIMILARITY_SECTIONS = (
    ("sec-neighbors", "Nearest neighbours: datamodels beside the representation",
     "neighbors", "sec_neighbors", "neighbors"),
    ("sec-leakage", "Train–test leakage candidates", "neighbors", "sec_leakage", "leakage"),
    ("sec-embeddings", "Datamodel embeddings: principal components", "embeddings",
     "sec_embeddings", "embeddings"),
    ("sec-faithfulness", "Faithfulness of principal components", "embeddings",
     "sec_faithfulness", "faithfulness"),
    ("sec-clusters", "Spectral clusters of datamodel embeddings", "clusters", "sec_clusters",
     "clusters"),
)


def _similarity_section(module: str, func: str, arg, what: str, ds, images):
    import importlib

    def make():
        obj = _as_dataset(arg, what)
        f = getattr(importlib.import_module(f"{__package__}.{module}"), func)
        return f(obj, ds, images)

    return make


def _as_dataset(obj, what: str) -> xr.Dataset | None:
    if obj is None or isinstance(obj, xr.Dataset):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return xr.open_zarr(os.fspath(obj), consolidated=False)
    raise InputError(f"{what} must be an xarray Dataset or a Zarr path, not "
                     f"{type(obj).__name__}")


def _no_heldout(ds) -> str | None:
    """Why the store cannot be evaluated (HTML), or None: evaluation, comparison and sample
    complexity are all measured on completed held-out models."""
    if ds is None:
        return None
    from ..analysis.evaluate import evaluation_runs

    try:
        evaluation_runs(ds)
    except InputError:
        return ("The store has no completed held-out models, which this is measured on: add "
                "them with <code>dmdask add STORE --kind heldout -n 500</code> (and "
                "replicates with <code>--kind replicate --of heldout</code>) and train them.")
    return None


def render_report(*, store, datamodels=None, evaluation=None, comparison=None,
                  sample_complexity=None, images: ImagesArg = None, title: str | None = None,
                  n_examples: int = 4, top_k: int = 5, counterfactuals=None, support=None,
                  mislabel=None, selection=None, values=None, alpha_sim=None,
                  verification=None, neighbors=None, leakage=None, embeddings=None,
                  clusters=None, faithfulness=None) -> str:
    """The report page as an HTML string (see :func:`write_report`)."""
    from .counterfactual import sec_counterfactuals, sec_selection, sec_support

    cf = _as_dataset(counterfactuals, "counterfactuals")
    sup = _as_dataset(support, "support")
    mis = _as_dataset(mislabel, "mislabel")
    sel = _as_dataset(selection, "selection")
    ds, path = _open_store(store)
    dm = _open_datamodels(datamodels)
    ev = _as_dataset(evaluation, "evaluation")
    cmp = _as_dataset(comparison, "comparison")
    sc = _as_dataset(sample_complexity, "sample_complexity")
    if title is None:
        title = "dmdask report" + (f": {Path(path).name}" if path else "")
    sections = [
        ("sec-pred-actual", "Predicted vs actual margins on held-out models",
         lambda: _sec_pred_actual(ds, dm)),
        ("sec-evaluation", "Evaluation", lambda: _sec_evaluation(ev)),
        ("sec-comparison", "Estimator comparison", lambda: _sec_comparison(cmp)),
        ("sec-sample-complexity", "Sample complexity", lambda: _sec_sample_complexity(sc)),
        ("sec-lambda-path", "λ path validation curves",
         lambda: _sec_lambda_path(dm, n_examples)),
        ("sec-images", "Training images with the largest weights",
         lambda: _sec_images(ds, dm, images, n_examples, top_k)),
        ("sec-counterfactuals", "Counterfactuals: predicted vs actual effects of removals",
         lambda: sec_counterfactuals(cf)),
        ("sec-support", "Data support and mislabel brittleness",
         lambda: sec_support(sup, mis)),
        ("sec-selection", "Datamodel-guided data selection", lambda: sec_selection(sel)),
    ]
    # data values and the α simulation appear only when given (docs/values.md)
    vals = _as_dataset(values, "values")
    sim = _as_dataset(alpha_sim, "alpha_sim")
    if vals is not None:
        sections.append(("sec-values", "Data values", lambda: _sec_values(vals)))
    if sim is not None:
        sections.append(("sec-alpha-sim", "The role of α (App. B simulation)",
                         lambda: _sec_alpha_sim(sim)))
    if verification is not None:  # only when given: most reports verify nothing
        sections.append(("sec-verification", "Verification of attribution scores (KPN)",
                         lambda: _sec_verification(verification)))
    # similarity and embeddings (issue 17): each section only when its Dataset is given
    similarity = {"neighbors": neighbors, "leakage": leakage, "embeddings": embeddings,
                  "clusters": clusters, "faithfulness": faithfulness}
    for sid, name, module, func, obj in SIMILARITY_SECTIONS:
        arg = similarity[obj]
        if arg is not None:
            sections.append((sid, name, _similarity_section(module, func, arg, obj, ds,
                                                            images)))
    no_heldout = _no_heldout(ds)
    given = {"sec-evaluation": ev, "sec-comparison": cmp, "sec-sample-complexity": sc}
    body = []
    for sid, name, make in sections:
        if no_heldout and sid in given and given[sid] is None:
            # say what the store lacks rather than how to compute what cannot be computed
            body.append(_section(sid, name, _missing(no_heldout)))
            continue
        try:
            content = make()
        except DmdaskError as e:  # a refused input spoils its section, not the page
            content = _missing(_esc(e))
        body.append(_section(sid, name, content))
    from ..version import __version__

    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='generator' content='dmdask {_esc(__version__)}'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>"
            f"{_header(ds, path, dm, title)}{''.join(body)}</main></body></html>\n")


def write_report(out, *, store, datamodels=None, evaluation=None, comparison=None,
                 sample_complexity=None, images: ImagesArg = None, title: str | None = None,
                 n_examples: int = 4, top_k: int = 5, counterfactuals=None, support=None,
                 mislabel=None, selection=None, values=None, alpha_sim=None,
                 verification=None, neighbors=None, leakage=None, embeddings=None,
                 clusters=None, faithfulness=None) -> Path:
    """Write the report page to ``out`` (an ``.html`` path; parent folders are created) and
    return its path.

    ``store``: run-store path or Dataset (:func:`dmdask.open_store`), or None.
    ``datamodels``: datamodels Dataset or Zarr path (:func:`dmdask.fit_datamodels`,
    :func:`dmdask.fit.save_datamodels`). ``evaluation``: the Dataset
    :func:`dmdask.evaluate` returns. ``comparison``: Dataset with dim ``row``, coords
    ``estimator``/``n_models``/``output`` and variables ``spearman, pearson, mse, auc, lds, r2,
    lds_ci_low, lds_ci_high, calibrated`` (and optionally ``lds_target(row, target)``).
    ``sample_complexity``: Dataset with dim ``n_models`` and ``mse, mse_ci_low, mse_ci_high,
    lds, spearman, r2`` and the scalar ``opt``. ``images``: see :func:`resolve_images`.
    ``n_examples``: targets shown with their images and λ paths; ``top_k``: positive and
    negative training images per target. ``counterfactuals``, ``support``, ``mislabel``,
    ``selection``: the Datasets of :mod:`dmdask.counterfactual` (or Zarr paths). ``values``
    (:func:`dmdask.values.api.values`) and ``alpha_sim``
    (:func:`dmdask.values.alpha_sim.alpha_simulation`) add their sections when given. Any input
    may be None: its section then says what is missing and how to produce it.
    ``verification``: verdicts of ``dmdask verify`` (a :class:`dmdask.verify.Verdict`, its
    ``to_dict()``, or a list of them) for a section of their own. ``neighbors``, ``leakage``,
    ``embeddings``, ``clusters``, ``faithfulness``: the Datasets of :mod:`dmdask.similarity`
    (or Zarr paths), each adding its section when given. Needs matplotlib (the
    ``viz`` extra).
    """
    from ..optional import require

    require("matplotlib")  # fail before any work, naming the extra
    page = render_report(store=store, datamodels=datamodels, evaluation=evaluation,
                         comparison=comparison, sample_complexity=sample_complexity,
                         images=images, title=title, n_examples=n_examples, top_k=top_k,
                         counterfactuals=counterfactuals, support=support, mislabel=mislabel,
                         selection=selection, values=values, alpha_sim=alpha_sim,
                         verification=verification, neighbors=neighbors, leakage=leakage,
                         embeddings=embeddings, clusters=clusters, faithfulness=faithfulness)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a page
    return out


# --------------------------------------------------------------------------- data values
def _sec_values(v) -> str:
    """Values with their standard errors (sorted), and the training examples valued most and
    least (mean over targets for per-target values)."""
    bad = _malformed(v, "train", ("value", "value_se"), "values Dataset")
    if bad:
        return bad
    val = np.asarray(v["value"].values, np.float64)
    se = np.asarray(v["value_se"].values, np.float64)
    if val.ndim == 2:
        val, se = np.nanmean(val, 1), np.sqrt(np.nanmean(se ** 2, 1)) / np.sqrt(val.shape[1])
    order = np.argsort(val)
    fig = _new_fig(8, 3.2)
    ax = fig.subplots()
    x = np.arange(val.size)
    ax.fill_between(x, (val - 1.96 * se)[order], (val + 1.96 * se)[order], color="#1f6feb",
                    alpha=0.25, lw=0, label="±1.96 se")
    ax.plot(x, val[order], color="#1f6feb", lw=1.2, label="value")
    ax.axhline(0, color="#57606a", lw=0.8)
    ax.set_xlabel("training examples, sorted by value")
    ax.set_ylabel("value")
    ax.legend(frameon=False, fontsize=8)
    a = v.attrs
    per = " (mean over targets)" if v["value"].ndim == 2 else ""
    cap = (f"{_esc(a.get('method', '?'))} values{per} for the utility "
           f"{_esc(a.get('utility', '?'))}: {_esc(a.get('n_evaluations', '?'))} utility "
           f"evaluations (runs) at {v.sizes.get('node', 1)} α node(s), sampling "
           f"{_esc(a.get('sampling', '?'))}.")
    top, low = order[::-1][:5], order[:5]
    rows = "".join(f"<tr><td>{int(v['train'].values[i])}</td><td>{_fmt(val[i], 4)}</td>"
                   f"<td>{_fmt(se[i], 3)}</td></tr>" for i in np.concatenate([top, low]))
    tab = ("<table><thead><tr><th>train</th><th>value</th><th>se</th></tr></thead>"
           f"<tbody>{rows}</tbody></table><p>The five highest, then the five lowest.</p>")
    return _figure("fig-values", fig, cap, "sorted data values with intervals") + tab


def _sec_alpha_sim(sim) -> str:
    """The paper's Fig. 16: correlation of actual vs predicted subpopulation-removal effects
    against α, one curve per feature frequency."""
    bad = _malformed(sim, "frequency", ("corr", "best_alpha"), "α-simulation Dataset")
    if bad:
        return bad
    al = np.asarray(sim["alpha"].values, np.float64)
    fig = _new_fig(7, 3.6)
    ax = fig.subplots()
    freqs = np.asarray(sim["frequency"].values, np.float64)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for k, p in enumerate(freqs):
        ax.plot(al, sim["corr"].values[k], "o-", color=cmap(k / max(1, freqs.size - 1)),
                label=f"p = {p:.3g}")
    ax.set_xlabel("α (subsampling fraction of the datamodels)")
    ax.set_ylabel("Pearson(actual, predicted)")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    best = ", ".join(f"{b:g}" for b in sim["best_alpha"].values)
    cap = ("Paper App. B, Fig. 16: how well OLS datamodels at each α predict the effect of "
           "removing a feature's subpopulation, by the feature's frequency p (rare = local). "
           f"Best α by increasing p: {best}. n = {_esc(sim.attrs.get('n'))}, d = "
           f"{_esc(sim.attrs.get('d'))}, m = {_esc(sim.attrs.get('m'))} runs per α.")
    return _figure("fig-alpha-sim", fig, cap, "correlation against alpha by frequency")


# --------------------------------------------------------------------------- verification


def _sec_verification(verification) -> str:
    """One row per verdict and target: decision, mse_hat, B̂_≥2, gap against ε/2, and the
    trainings each side spent (issue 19)."""
    items = verification if isinstance(verification, (list, tuple)) else [verification]
    rows = []
    for v in items:
        d = v.to_dict() if hasattr(v, "to_dict") else dict(v)
        if "plan" not in d or "mse_hat" not in d:
            raise DmdaskError("a verification must be a verdict of `dmdask verify --json`")
        plan = d["plan"]
        targets = d.get("targets", list(range(len(d["mse_hat"]))))
        for i, t in enumerate(targets):
            cells = [d.get("protocol", ""), t, d["decision"], _fmt(d["mse_hat"][i], 4),
                     _fmt(d["b_ge2_hat"][i], 4), _fmt(d["gap_hat"][i], 4),
                     _fmt(plan["threshold"], 4), plan["epsilon"], plan["delta"],
                     d["verifier_trainings"], d["prover_trainings"]]
            rows.append("<tr>" + "".join(
                f"<td class='l'>{_esc(c)}</td>" if j < 3 else f"<td>{_esc(c)}</td>"
                for j, c in enumerate(cells)) + "</tr>")
    head = ["protocol", "target", "decision", "mse_hat", "B̂_≥2 (optimal error)", "gap",
            "accept iff gap ≤", "ε", "δ", "verifier trainings", "prover trainings"]
    return ("<p>Claimed scores checked against the best linear attribution (Karchmer, "
            "Pawelczyk and Neel; docs/verify.md): accepted iff mse_hat ≤ B̂_≥2 + ε/2 on every "
            "target and every spot-checked model matched.</p><table><tr>"
            + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")
