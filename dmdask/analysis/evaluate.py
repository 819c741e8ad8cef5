"""``evaluate``: how well an attribution matrix predicts held-out model outputs (issue 5;
REFERENCE.md §2.1, §2.6).

**Which models.** Evaluation *subsets* are the completed ``kind == "heldout"`` models; their
*runs* are the held-out model itself plus every completed model whose ``replicate_of`` chain
leads to it (same mask, new seed). Fitting models (``kind == "random"``) are used only for
the calibration below (the first ``calibration_models`` of them, default all); nothing else
is read.

**What is scored against.** ``output`` (default: the output the scores model, their
``output`` attr): ``"margin"`` — every run's margin — or ``"correctness"`` — 1[margin > 0],
NaN where the margin is missing. A correctness estimator is scored against correctness, the
output it models; the attrs say which (``scored_against``).

**Predictions.** z(S′) = Σ_{j∈S′} τ_j = ``mask @ scoreᵀ``, computed with dask over the store's
model blocks. Then, per target:

* scores with a bias that model the output scored against (datamodels, OLS, ridge,
  difference of means): g = z + b, unchanged (``calibrate="auto"``);
* scores without a bias, or that model another output: the best affine map g = a·z + c with
  **a ≥ 0**, fitted on the fitting models by least squares (REFERENCE §2.6; a = max(0,
  Cov(z, f)/Var z), c = f̄ − a·z̄, from the one-pass sums Σz, Σz², Σzy, Σy, n over the
  random models, NaN-aware). A slope that would be negative is 0: calibration never flips
  the sign of an estimator. The output records ``calibrated`` and the per-target
  ``calib_slope``/``calib_intercept``/``calib_n_models``. ``calibrate=True`` forces it,
  ``False`` forbids it (then a missing bias counts as 0).

**By blocks of targets.** The scores are read one block of targets at a time (setting
``dmdask.evaluate.block-targets``, else ``dmdask.evaluate.block-bytes`` of float64 rows): its
predictions, calibration, held-out outputs and per-target metrics, then the next; only the
pooled AUC's (prediction, label) pairs span every target. No ``[targets, train]`` array is
made from lazy scores (docs/evaluation.md, *Memory*).

**Metrics per target** (all NaN-aware; undefined → NaN, counted in the attrs):

* ``mse``, ``r2``: g against every held-out run's output (the runs of one subset are
  separate observations; with replicates, subsets with more runs weigh more);
* ``pearson``, ``spearman``, ``auc``: the **raw** prediction z against the same runs (AUC:
  z as a score for correctness 1[output > 0] of every run; targets always right or always
  wrong on the held-out runs are skipped). They are invariant to a positive affine map, so
  they equal the calibrated ones whenever the slope is positive, and a wrongly signed
  estimator scores negative (below ½ for AUC) — never sign-corrected by the calibration;
  ``auc_pooled`` (attr) pools all (run, target) pairs of the calibrated g (pooling needs
  the per-target offsets);
* ``lds``: TRAK's linear datamodeling score — Spearman over subsets between z (raw scores,
  no calibration, no bias) and the output averaged over the subset's runs
  (:func:`dmdask.analysis.metrics.lds`);
* ``opt``: the noise floor, unbiased replicate variance averaged over subsets with ≥ 2 runs
  (paper eq. 11); ``excess_mse`` = mse − opt (E(f − g)² = OPT + E(E[f|S′] − g)²);
  ``r2_noise_adjusted`` = 1 − (mse − opt)/(Var f − opt).

**Training-example targets** (``target_train_index ≥ 0``) with ``eq9=True`` (default): runs
whose subset contains the target are treated as missing for it, in the evaluation and in
the calibration, as the paper's eq. 9 does for fitting. NaN scores are accepted only at such
a target's own column (an estimator cannot estimate it from models that exclude the
target) and are set to 0 there; any other NaN score is an error.

**Summary attrs**: for each metric ``<m>_mean``, ``<m>_ci_low``, ``<m>_ci_high``,
``<m>_n_used``, ``<m>_n_skipped`` (mean over targets, CI per :func:`dmdask.analysis.metrics.summarize`:
Student-t by default, ``ci="bootstrap"`` for the percentile bootstrap over targets).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ..backend import dask_to_backend, get_namespace, namespace, to_numpy
from ..errors import InputError
from ..outputs import portable_attrs
from . import metrics as M
from .scores import block_targets, load_scores

__all__ = ["calibration", "evaluate", "evaluation_runs"]

PER_TARGET = ("mse", "r2", "r2_noise_adjusted", "pearson", "spearman", "lds", "auc", "opt",
              "excess_mse")


def _open(ds):
    if isinstance(ds, xr.Dataset):
        return ds
    from ..store.runstore import open_store

    return open_store(ds)


def evaluation_runs(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(subsets, runs, group)``: positions of the completed held-out models, positions of
    all their runs (held-out model and completed replicates), and each run's subset index
    (into ``subsets``)."""
    kind = np.asarray(ds["kind"].values).astype(str)
    done = np.asarray(ds["completed"].values).astype(bool)
    rep = np.asarray(ds["replicate_of"].values, dtype=np.int64)
    model = np.asarray(ds["model"].values, dtype=np.int64)
    pos_of = {int(m): i for i, m in enumerate(model)}
    subsets = np.flatnonzero((kind == "heldout") & done)
    if subsets.size == 0:
        raise InputError("no completed held-out models (kind 'heldout') to evaluate on; add them "
                         "with dmdask.add_models(path, 'heldout', n=…) and train")
    root_of = {int(p): k for k, p in enumerate(subsets)}
    runs, group = list(subsets), list(range(subsets.size))
    for i in np.flatnonzero((rep >= 0) & done & (kind != "heldout")):
        j, seen = i, 0
        while rep[j] >= 0 and seen < 64:  # follow replicate_of chains to the held-out model
            nxt = pos_of.get(int(rep[j]))
            if nxt is None:
                break
            j, seen = nxt, seen + 1
        if j in root_of:
            runs.append(int(i))
            group.append(root_of[j])
    order = np.argsort(runs, kind="stable")
    return subsets, np.asarray(runs)[order], np.asarray(group)[order]


def _calibration(ds, tau, tpos, tti, eq9, client, alpha=None, *, output="margin",
                 n_models=None):
    """Per target (a, c, n): least-squares affine map of z = mask @ τ to the output over the
    first ``n_models`` random (fitting) models, slope constrained to a ≥ 0; one pass, dask
    over model blocks."""
    from ..fit.datamodels import select_models
    from ..scheduling import compute

    rows, _ = select_models(ds, alpha, n_models)
    X = ds["mask"].data[rows]
    Y = ds["margin"].data[rows][:, tpos]
    if output == "correctness":
        Y = Y.map_blocks(M.correctness, dtype=np.float64)
    # the block products run on the chunks' backend (setting dmdask.array.backend)
    xp = namespace()
    tau_t = xp.asarray(np.ascontiguousarray(tau.T))
    cols = xp.asarray(np.where(tti >= 0, tti, 0)) if eq9 else None
    own = xp.asarray(tti >= 0)

    def block(xb, yb):
        xq = get_namespace(xb, yb)
        z = xb.astype(xq.float64) @ tau_t
        y = yb.astype(xq.float64)
        w = ~xq.isnan(y)
        if cols is not None:
            w &= ~(own[None, :] & xb[:, cols])
        z0, y0 = xq.where(w, z, 0.0), xq.where(w, y, 0.0)
        return xq.stack([w.sum(0), z0.sum(0), (z0 * z0).sum(0), (z0 * y0).sum(0),
                         y0.sum(0)])[None]

    def add(*p):
        out = p[0]
        for q in p[1:]:
            out = out + q
        return out[0]

    import dask

    Xc = dask_to_backend(X.rechunk({1: -1}))
    Yc = dask_to_backend(Y.rechunk((Xc.chunks[0], -1)))
    f = dask.delayed(block, pure=True)
    parts = [f(xb, yb) for xb, yb in zip(Xc.to_delayed().ravel(), Yc.to_delayed().ravel(),
                                         strict=True)]
    total = dask.delayed(add)(*parts)
    (tot,) = compute([total], client=client)
    n, sz, szz, szy, sy = to_numpy(tot)
    with np.errstate(invalid="ignore", divide="ignore"):
        zbar, ybar = sz / n, sy / n
        var = szz / n - zbar**2
        cov = szy / n - zbar * ybar
        a = np.where(var > 1e-12 * np.maximum(szz / n, 1e-300), cov / var, 0.0)
        # a negative slope would turn a wrongly signed estimator into a right one
        a = np.maximum(a, 0.0)
        c = ybar - a * zbar
    return a, c, n


def calibration(ds, tau, tpos, *, client=None, alpha=None, output: str = "margin",
                n_models: int | None = None):
    """Per target (slope ≥ 0, intercept, number of runs) of the least-squares affine map from
    ``z = mask @ τ`` to the output over the store's random (fitting) models, training-example
    targets' own columns excluded (eq. 9): how scale-free scores become predictions."""
    tti = (np.asarray(ds["target_train_index"].values, np.int64)[np.asarray(tpos)]
           if "target_train_index" in ds.coords else np.full(len(tpos), -1, np.int64))
    return _calibration(ds, np.asarray(tau, np.float64), np.asarray(tpos, np.int64), tti, True,
                        client, alpha, output=output, n_models=n_models)


def evaluate(ds, scores, *, calibrate="auto", output: str | None = None, eq9: bool = True,
             ci: str = "t", level: float = 0.95, layout: str = "auto",
             alpha: float | None = None, calibration_models: int | None = None,
             client=None) -> xr.Dataset:
    """Evaluate an attribution matrix on the store's held-out models (see the module
    docstring). ``scores``: anything :func:`dmdask.analysis.scores.load_scores` reads.
    ``output``: what to score against, ``"margin"`` or ``"correctness"`` (default: the
    output the scores model). Returns a Dataset with per-target variables ``mse, r2,
    r2_noise_adjusted, pearson, spearman, lds, auc, opt, excess_mse, var_actual, n_runs,
    n_subsets, n_opt_subsets, calib_slope, calib_intercept, calib_n_models`` and summary
    attributes. ``alpha``: which random models calibrate when the store holds several α (as
    :func:`dmdask.fit.select_models`); ``calibration_models``: calibrate on the first n of
    them only (default all)."""
    ds = _open(ds)
    sc = load_scores(scores, ds=ds, layout=layout) if not _is_schema(scores) else scores
    tpos = np.asarray(sc["target"].values, dtype=np.int64)
    n_target = ds.sizes["target"]
    if tpos.min(initial=0) < 0 or tpos.max(initial=0) >= n_target:
        raise InputError(f"scores name targets outside the store's [0, {n_target})")
    if sc.sizes["train"] != ds.sizes["train"]:
        raise InputError(f"scores have {sc.sizes['train']} training columns, the store "
                         f"{ds.sizes['train']}")
    scores_tt = sc.transpose("target", "train").data  # NumPy, or dask read by blocks
    if "target_train_index" in ds.coords:
        tti = np.asarray(ds["target_train_index"].values, dtype=np.int64)[tpos]
    else:
        tti = np.full(tpos.size, -1, np.int64)
    if not eq9:
        tti_eff = np.full_like(tti, -1)
    else:
        tti_eff = tti
    bias = sc.coords["bias"].values.astype(np.float64) if "bias" in sc.coords else None
    sc_output = str(sc.attrs.get("output", "margin"))
    output = sc_output if output is None else output
    if output not in ("margin", "correctness"):
        raise InputError(f"output must be 'margin' or 'correctness', not {output!r}")
    if calibrate == "auto":
        do_cal = bias is None or sc_output != output
    elif calibrate in (True, "affine"):
        do_cal = True
    elif calibrate in (False, "none", None):
        do_cal = False
    else:
        raise InputError(f"calibrate must be 'auto', True or False, not {calibrate!r}")

    subsets, runs, group = evaluation_runs(ds)
    from ..scheduling import compute

    Xs = ds["mask"].data[subsets]

    # the scores are read by blocks of targets (setting dmdask.evaluate.block-targets):
    # predictions z = mask @ τ_blockᵀ on the backend's chunks (dmdask.array.backend) and
    # the calibration per block, so no [targets, train] array is ever held
    xp = namespace()
    Xs64 = dask_to_backend(Xs).astype(np.float64)
    step = block_targets(ds.sizes["train"])
    a, c, n_cal = np.ones(tpos.size), np.zeros(tpos.size), np.zeros(tpos.size)
    # per (run, target): only the calibrated prediction and its label, for the pooled AUC
    g = np.empty((runs.size, tpos.size))
    label = np.empty((runs.size, tpos.size), np.int8)  # 1, 0; -1: no output
    per: dict[str, np.ndarray] = {}
    n_bad, t_bad, n_inf = 0, 0, 0
    for b0 in range(0, tpos.size or 1, step):  # one empty block for no targets
        sl = slice(b0, min(b0 + step, tpos.size))
        tau = scores_tt[sl]
        # no copy of a block that is float64 already (the dask read casts it)
        tau = np.asarray(tau.compute() if hasattr(tau, "compute") else tau, dtype=np.float64)
        bad = np.isnan(tau)
        if bad.any():
            tau = tau.copy()  # may be a view of the caller's array
            own = np.zeros_like(bad)
            t_own = np.flatnonzero(tti_eff[sl] >= 0)
            own[t_own, tti_eff[sl][t_own]] = True
            n_bad += int((bad & ~own).sum())
            t_bad += int((bad & ~own).any(1).sum())
            tau[bad] = 0.0
        n_inf += int(np.isinf(tau).sum())
        if n_bad or n_inf:
            continue  # refused below, with the counts over every block
        (zb,) = compute([da.dot(Xs64, xp.asarray(tau.T))], client=client)
        z = to_numpy(zb)
        if do_cal:
            a[sl], c[sl], n_cal[sl] = _calibration(
                ds, tau, tpos[sl], tti_eff[sl], eq9, client, alpha, output=output,
                n_models=calibration_models)
        elif bias is not None:
            c[sl] = bias[sl]
        del tau
        y = _heldout_outputs(ds, Xs, runs, group, tpos[sl], tti_eff[sl], output, client)
        g[:, sl] = a[sl] * z[group] + c[sl]
        lab = M.correctness(y)
        label[:, sl] = np.where(np.isnan(lab), -1, lab)
        for k, v in _block_metrics(z, g[:, sl], y, lab, group, ci, level).items():
            per.setdefault(k, np.full(tpos.size, np.nan))[sl] = v
    if n_bad:
        raise InputError(f"scores contain {n_bad} NaN entries (in {t_bad} targets) outside "
                         "the eq. 9 self-columns; fill or drop them first")
    if n_inf:
        raise InputError("scores contain ±inf")
    if do_cal:
        cal_method = ("affine least squares, slope >= 0, on the "
                      + (f"first {int(calibration_models)} " if calibration_models else "")
                      + "random (fitting) models")
    else:
        cal_method = "none (scores' own bias)" if bias is not None else "none (bias 0)"

    coords = {"target": sc["target"].values}
    for cname in ("target_label", "target_train_index"):
        if cname in ds.coords:
            coords[cname] = ("target", np.asarray(ds[cname].values)[tpos])
    extra = {k: per.pop(k) for k in ("var_actual", "n_runs", "n_subsets", "n_opt_subsets")}
    data = {k: ("target", np.asarray(v, np.float64)) for k, v in per.items()}
    per.update(extra)
    data.update({
        "var_actual": ("target", per.pop("var_actual")),
        "n_runs": ("target", per.pop("n_runs").astype(np.int64)),
        "n_subsets": ("target", per.pop("n_subsets").astype(np.int64)),
        "n_opt_subsets": ("target", per.pop("n_opt_subsets").astype(np.int64)),
        "calib_slope": ("target", np.asarray(a, np.float64)),
        "calib_intercept": ("target", np.asarray(c, np.float64)),
        "calib_n_models": ("target", np.asarray(n_cal, np.float64)),
    })
    attrs = {
        "estimator": str(sc.attrs.get("estimator", "custom")),
        "scores_source": str(sc.attrs.get("source", "")),
        "scores_output": sc_output,
        "scored_against": str(output),
        "rank_metrics": "pearson, spearman, auc and lds on the raw predictions mask @ score "
                        "(never calibrated)",
        "calibrated": int(do_cal),
        "calibration": cal_method,
        "calibrate_requested": str(calibrate),
        "eq9": int(eq9),
        "n_heldout_subsets": int(subsets.size),
        "n_heldout_runs": int(runs.size),
        "n_replicate_runs": int(runs.size - subsets.size),
        "auc_pooled": _pooled_auc(g, label),
        "ci_method": "student-t over targets" if ci == "t" else "percentile bootstrap over "
                     "targets",
        "ci_level": float(level),
        "lds_definition": "TRAK: per-target Spearman over held-out subsets between mask @ "
                          "score and the replicate-mean margin; mean over targets",
    }
    for k in PER_TARGET:
        s = M.summarize(per[k], ci=ci, level=level)
        for f in ("mean", "ci_low", "ci_high", "n_used", "n_skipped"):
            attrs[f"{k}_{f}"] = s[f]
    return xr.Dataset(data, coords=coords, attrs=portable_attrs(attrs))


def _heldout_outputs(ds, Xs, runs, group, tpos, tti, output, client) -> np.ndarray:
    """Every held-out run's output for targets ``tpos`` ``[runs, targets]``: margin or
    correctness, NaN where a training-example target's own subset contains it (eq. 9)."""
    from ..scheduling import compute

    own = tti >= 0
    objs = [ds["margin"].data[runs][:, tpos]] + ([Xs[:, tti[own]]] if own.any() else [])
    res = compute(objs, client=client)
    y = np.asarray(to_numpy(res[0]), dtype=np.float64)
    if output == "correctness":
        y = M.correctness(y)
    if own.any():
        contains = np.zeros((Xs.shape[0], tpos.size), bool)
        contains[:, own] = to_numpy(res[1])
        y = np.where(contains[group], np.nan, y)
    return y


def _block_metrics(z, g, y, label, group, ci, level) -> dict[str, np.ndarray]:
    """The per-target metrics of one block of targets (every metric is per column)."""
    per = {"mse": np.atleast_1d(M.mse(g, y))}
    var_f = np.atleast_1d(M.variance(y))
    per["r2"] = np.atleast_1d(M.r2(g, y))
    # correlations and AUC on the raw predictions: the calibration's per-target slope
    # must not decide their sign
    zr = z[group]
    per["pearson"] = np.atleast_1d(M.pearson(zr, y))
    per["spearman"] = np.atleast_1d(M.spearman(zr, y))
    per["auc"] = np.atleast_1d(M.auc(zr, label))
    _, fbar, cnt = M.group_means(y, group)
    per["lds"] = M.lds_from_predictions(z, fbar, ci=ci, level=level).per_target
    opt, n_opt = M.opt_floor(y, group)
    per["opt"] = opt
    per["excess_mse"] = M.excess_error(per["mse"], opt)
    per["r2_noise_adjusted"] = M.noise_adjusted_r2(per["mse"], var_f, opt)
    per["var_actual"] = var_f
    per["n_runs"] = (~np.isnan(y)).sum(0)
    per["n_subsets"] = (cnt > 0).sum(0)
    per["n_opt_subsets"] = np.asarray(n_opt)
    return per


def _pooled_auc(g, label) -> float:
    """:func:`dmdask.analysis.metrics.auc_pooled` of every (run, target) pair from the
    prediction and an int8 label (-1: missing), without its float64 copies of the pool."""
    from scipy.stats import rankdata

    valid = (label >= 0) & ~np.isnan(g)
    s, pos = g[valid], label[valid] == 1
    del valid
    npos = int(pos.sum())
    nneg = pos.size - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    u = rankdata(s, method="average")[pos].sum() - npos * (npos + 1) / 2.0
    return float(u / (npos * nneg))


def _is_schema(obj) -> bool:
    return (isinstance(obj, xr.DataArray) and obj.name == "score"
            and tuple(obj.dims) == ("target", "train") and "estimator" in obj.attrs)
