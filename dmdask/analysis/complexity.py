"""Sample complexity: held-out metrics against the number of fitting models (the paper's
Figure 6), from **one** statistics pass.

The fitting models (``kind == "random"``, one α) are taken in model-index order and the
nested prefixes of ``sizes`` models are fitted. The statistics pass cuts the rows at every
boundary any prefix needs — its end and its holdout split or its K contiguous CV folds — so
each prefix's groups are sums of the pass's segments (statistics are additive) and no mask
is read twice. For each prefix:

* ``lasso``: the Gram solver's path, selection (holdout or K-fold CV inside the prefix, as
  :func:`dmdask.fit.fit_datamodels` would do on those models alone) and refit;
* ``dom_margin``, ``ols``, ``ridge``: the closed forms of :mod:`dmdask.analysis.estimators.store`
  from the prefix's statistics;

then :func:`dmdask.evaluate` on the held-out models gives the mean over targets (with CI) of
MSE, R², Pearson, Spearman, AUC and LDS. The OPT noise floor (paper eq. 11, from the held-out
replicates) does not depend on the prefix and is returned once: a datamodel's held-out MSE
approaches it from above as the prefix grows (E(f − g)² = OPT + E(E[f|S′] − g)²).

Targets with their own rows (NaN margins among the fitting models, or training-example
targets under paper eq. 9) cannot share the Gram; they are left out and counted in
``attrs['n_targets_excluded']``.

Memory: one float64 d × d Gram per segment (≈ folds × len(sizes) of them) — 13 MB each for
the 1,297 digits training examples, 200 MB each at d = 5,000.
"""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["default_sizes", "sample_complexity"]

ESTIMATORS = ("lasso", "dom_margin", "ols", "ridge")
METRICS = ("mse", "excess_mse", "r2", "r2_noise_adjusted", "pearson", "spearman", "auc", "lds")


def default_sizes(n: int, *, steps: int = 6, smallest: int = 50) -> list[int]:
    """Geometric prefix sizes ending at ``n``: n/2^(steps−1), …, n/2, n (at least
    ``smallest``, unique, ascending)."""
    sizes = sorted({int(round(n / 2**k)) for k in range(steps)})
    return [s for s in sizes if s >= min(smallest, n)]


def _group_bounds(size: int, selection: str, folds: int, val_fraction: float) -> np.ndarray:
    from ..fit.solve.grid import fold_bounds, holdout_size

    if selection == "holdout":
        return np.array([0, holdout_size(size, val_fraction), size])
    return fold_bounds(size, folds)


def sample_complexity(ds, sizes=None, *, estimators=("lasso", "dom_margin"),
                      selection: str = "cv", folds: int = 5, val_fraction: float = 0.1,
                      n_lambdas: int = 30, lambda_ratio: float = 1e-3, tol: float = 1e-5,
                      early_stop: bool = True, ridge_lam: float = 1e-2,
                      alpha: float | None = None, ci: str = "t", client=None,
                      progress: bool = False) -> xr.Dataset:
    """Held-out metrics of each estimator fitted on nested prefixes of the fitting models.

    ``sizes``: prefix sizes (default :func:`default_sizes`); ``estimators``: any of
    ``lasso, dom_margin, ols, ridge``; ``selection``: ``"cv"`` (``folds`` contiguous folds
    inside each prefix) or ``"holdout"`` (its first ``val_fraction`` validate) for LASSO's λ.

    Returns a Dataset with dims ``(estimator, n_models)``: for each metric in
    ``mse, excess_mse, r2, r2_noise_adjusted, pearson, spearman, auc, lds`` the mean over
    targets and ``<metric>_ci_low``/``_ci_high``; scalars ``opt`` (OPT noise floor, mean over
    targets) and ``var_actual``; ``seconds`` per estimator and size; attrs with the counts.
    """
    from ..fit.datamodels import _open, select_models
    from ..fit.solve.base import PathOptions, Split
    from ..fit.solve.gram import solve_from_stats
    from ..fit.stats import SufficientStats, compute_stats
    from ..scheduling import compute
    from .estimators.store import dom_from_stats, least_squares_from_stats
    from .evaluate import evaluate
    from .scores import make_scores

    t_start = time.perf_counter()
    ds = _open(ds)
    estimators = tuple(estimators)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad or not estimators:
        raise InputError(f"sample_complexity estimators must be among {ESTIMATORS}, not {bad}")
    if selection not in ("cv", "holdout"):
        raise InputError(f"selection must be 'cv' or 'holdout', not {selection!r}")
    rows, alpha = select_models(ds, alpha)
    n = rows.size
    sizes = default_sizes(n) if sizes is None else sorted({int(s) for s in sizes})
    low = 2 * folds if selection == "cv" else 4
    if not sizes or sizes[0] < low or sizes[-1] > n:
        raise InputError(f"sizes must lie in [{low}, {n}] (the store has {n} fitting models "
                         f"with alpha={alpha}); got {sizes}")
    Y = ds["margin"].data[rows]
    if "target_train_index" in ds.coords:
        tti = np.asarray(ds["target_train_index"].values, dtype=np.int64)
    else:
        tti = np.full(ds.sizes["target"], -1, np.int64)
    has_nan = np.asarray(compute([da.isnan(Y).any(axis=0)], client=client)[0])
    tpos = np.flatnonzero(~has_nan & (tti < 0))
    if tpos.size == 0:
        raise InputError("every target has its own rows (NaN margins or training-example "
                         "targets): sample_complexity needs targets that share the design")
    X = ds["mask"].data[rows[: sizes[-1]]]
    Y = Y[: sizes[-1]][:, tpos]
    per_size = {s: _group_bounds(s, selection, folds, val_fraction) for s in sizes}
    cuts = np.unique(np.concatenate(list(per_size.values())))
    c_dtype = "float32" if tol >= 1e-7 else None
    segs = compute_stats(X, Y, cuts, client=client, progress=progress, c_dtype=c_dtype)
    segs = [s.to_numpy() for s in segs]

    def span(a, b):
        i, j = int(np.searchsorted(cuts, a)), int(np.searchsorted(cuts, b))
        return SufficientStats.sum(segs[i:j])

    sub = ds.isel(target=tpos)
    options = PathOptions(n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, tol=tol,
                          early_stop=early_stop)
    split = Split(selection, val_fraction=val_fraction, folds=folds)
    shape = (len(estimators), len(sizes))
    out = {f"{m}{s}": np.full(shape, np.nan) for m in METRICS for s in ("", "_ci_low",
                                                                          "_ci_high")}
    seconds = np.zeros(shape)
    opt = var_actual = np.nan
    n_subsets = 0
    for j, size in enumerate(sizes):
        b = per_size[size]
        groups = [span(b[k], b[k + 1]) for k in range(len(b) - 1)]
        full = SufficientStats.sum(groups)
        for i, est in enumerate(estimators):
            t0 = time.perf_counter()
            if est == "lasso":
                res = solve_from_stats(groups, split, options, client=client)
                W, bias = res.weight, res.bias
            elif est == "dom_margin":
                W, bias = dom_from_stats(full.n, full.s, full.C, full.sy)
            else:
                lam = ridge_lam if est == "ridge" else 0.0
                W, bias = least_squares_from_stats(full.n, full.G, full.s, full.C, full.sy,
                                                   lam=lam)
            sc = make_scores(np.nan_to_num(W), bias=bias, estimator=est, ds=sub,
                             attrs={"n_models": int(size)})
            ev = evaluate(ds, sc, ci=ci, client=client)
            seconds[i, j] = time.perf_counter() - t0
            for m in METRICS:
                for s, key in (("", "mean"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                    out[f"{m}{s}"][i, j] = ev.attrs[f"{m}_{key}"]
            opt = ev.attrs["opt_mean"]
            var_actual = float(np.nanmean(ev["var_actual"].values))
            n_subsets = int(ev.attrs["n_heldout_subsets"])
        if progress:
            print(f"sample complexity: {size} models done")
    dims = ("estimator", "n_models")
    data = {k: (dims, v) for k, v in out.items()}
    data["seconds"] = (dims, seconds)
    data["opt"] = ((), float(opt), {"description": "OPT noise floor (paper eq. 11): mean "
                                                    "replicate variance of the held-out runs"})
    data["var_actual"] = ((), var_actual)
    src = ds.attrs.get("dmdask", {})
    attrs = {
        "store": str(src.get("path", "")) if isinstance(src, dict) else "",
        "alpha": alpha,
        "selection": selection,
        "folds": folds if selection == "cv" else 0,
        "val_fraction": val_fraction if selection == "holdout" else 0.0,
        "n_targets": int(tpos.size),
        "n_targets_excluded": int(ds.sizes["target"] - tpos.size),
        "n_heldout_subsets": n_subsets,
        "statistics_segments": int(len(cuts) - 1),
        "seconds_total": time.perf_counter() - t_start,
        "nested": "prefixes of the fitting models in model-index order; one statistics pass",
    }
    return xr.Dataset(data, coords={"estimator": np.array(estimators, dtype=object),
                                       "n_models": sizes},
                      attrs=portable_attrs(attrs))
