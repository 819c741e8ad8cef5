"""Estimators computed from the run store alone: difference of means (Feldman–Zhang) on
margins and on correctness, OLS (least-norm, optionally lightly ridged) and ridge
(REFERENCE.md §2.3–§2.4).

All four come from one statistics pass over the fitting models (``kind == "random"``,
completed, one α; the same selection as :func:`dmdask.fit.select_models`):

* targets whose rows are shared (no NaN output among the fitting models, not a training
  example) use :func:`dmdask.fit.stats.compute_stats` — n, G = XᵀX, s, C = XᵀY, Σy, Σy²;
* the other targets — NaN outputs, and training-example targets under paper eq. 9 (only
  models that exclude the target are used) — have their own rows; a private weighted pass
  (:func:`_own_row_stats`) accumulates per target n_t, s_t = XᵀW_t, C_t = Xᵀ(W_t∘y), Σ, Σ²
  (and, for OLS/ridge only, the per-target Gram Xᵀdiag(W_t)X, d² floats per such target).

Formulas (raw-mask space, prediction = mask @ w + b):

* difference of means: infl_j = mean_{i: j∈S_i} y_i − mean_{i: j∉S_i} y_i
  = C_j/s_j − (Σy − C_j)/(n − s_j); NaN where j is in all or in none of the rows (e.g. the
  target's own column under eq. 9); bias b = ȳ − Σ_j infl_j·m̄_j over the defined columns.
* OLS: w = G_c⁺ c_c (G_c = G − ssᵀ/n, c_c = C − s·Σy/n), the pseudo-inverse from an
  eigendecomposition dropping eigenvalues ≤ ``rcond``·λ_max — with fixed-size subsets G_c
  has the exact null vector 1, so min-norm OLS returns Σ_j w_j = 0 (REFERENCE §0);
  ``light_ridge=ε`` instead solves (G_c + ε·tr(G_c)/d·I) w = c_c.
* ridge: (G_c + nλI) w = c_c (REFERENCE §1.4); b = (Σy − sᵀw)/n for both. λ is chosen per
  target by K-fold cross-validation as LASSO's is (:func:`ridge_cv_from_folds`): the
  contiguous folds of :func:`dmdask.fit.splits.fold_bounds` over the fitting models, the
  mean over folds of the validation MSE, the smallest one (ties → the smaller λ), then the
  refit on all fitting models; the per-fold statistics come from the same single pass.

Correctness outputs are 1[margin > 0], NaN where the margin is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ... import config
from ...errors import InputError
from ..metrics import correctness
from ..scores import make_scores

__all__ = [
    "OwnRowStats",
    "StoreStats",
    "difference_of_means",
    "dom_from_stats",
    "least_squares_from_stats",
    "ols",
    "ridge",
    "ridge_cv_from_folds",
    "ridge_lambda_grid",
    "store_statistics",
]


# ------------------------------------------------------------------ statistics
@dataclass
class OwnRowStats:
    """Weighted statistics of targets with their own rows: ``n`` [T], ``s`` [d, T],
    ``C`` [d, T], ``sy`` [T], ``syy`` [T], optional ``G`` [T, d, d] (float64)."""

    n: np.ndarray
    s: np.ndarray
    C: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    G: np.ndarray | None = None


@dataclass
class StoreStats:
    """Statistics of one output (``margin`` or ``correctness``) over the fitting models.

    ``shared``/``own`` hold the statistics of the target positions ``shared_targets`` /
    ``own_targets`` (positions into ``targets``); with ``folds``, ``shared_folds`` /
    ``own_folds`` hold those of each contiguous fold ``[fold_bounds[k], fold_bounds[k+1])``
    of ``rows`` (``shared``/``own`` are their sums)."""

    output: str
    alpha: float
    rows: np.ndarray
    targets: np.ndarray
    shared_targets: np.ndarray
    own_targets: np.ndarray
    shared: object | None  # dmdask.fit.stats.SufficientStats
    own: OwnRowStats | None
    eq9: bool
    info: dict = field(default_factory=dict)
    fold_bounds: np.ndarray | None = None
    shared_folds: list | None = None
    own_folds: list | None = None


def _block_own(xb, yb, tti, want_gram):
    x = np.asarray(xb).astype(np.float64)
    y = np.asarray(yb, dtype=np.float64)
    w = ~np.isnan(y)
    if tti is not None:
        has = tti >= 0
        w[:, has] &= x[:, tti[has]] == 0
    wf = w.astype(np.float64)
    y0 = np.where(w, y, 0.0)
    out = [wf.sum(0), x.T @ wf, x.T @ y0, y0.sum(0), (y0 * y0).sum(0)]
    if want_gram:
        out.append(np.einsum("nt,ni,nj->tij", wf, x, x, optimize=True))
    return out


def _sum_own(*parts):
    return [sum(p[k] for p in parts) for k in range(len(parts[0]))]


def _own_row_stats(X, Y, tti, *, want_gram: bool, row_block: int, client=None,
                   bounds=None) -> list[OwnRowStats]:
    """One :class:`OwnRowStats` per contiguous group ``[bounds[g], bounds[g+1])`` of rows
    (default: one group, all rows), all in one pass."""
    n = X.shape[0]
    bounds = [0, n] if bounds is None else [int(b) for b in bounds]
    f = dask.delayed(_block_own, pure=True)
    s = dask.delayed(_sum_own, pure=True)
    tops = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        chunks = tuple(min(row_block, hi - i) for i in range(lo, hi, row_block))
        xb = X[lo:hi].rechunk((chunks, X.shape[1])).to_delayed().ravel()
        yb = Y[lo:hi].rechunk((chunks, Y.shape[1])).to_delayed().ravel()
        parts = [f(a, b, tti, want_gram) for a, b in zip(xb, yb, strict=True)]
        while len(parts) > 1:
            parts = [s(*parts[i:i + 4]) for i in range(0, len(parts), 4)]
        tops.append(parts[0])
    from ...scheduling import compute

    res = compute(tops, client=client)
    return [OwnRowStats(*r[:5], G=r[5] if want_gram else None) for r in res]


def _sum_own_stats(parts: list[OwnRowStats]) -> OwnRowStats:
    tot = OwnRowStats(*(sum(getattr(p, k) for p in parts) for k in ("n", "s", "C", "sy", "syy")))
    if parts[0].G is not None:
        tot.G = sum(p.G for p in parts)
    return tot


def _select_rows(ds, alpha, n_models=None):
    from ...fit.datamodels import select_models

    return select_models(ds, alpha, n_models)


def store_statistics(ds, *, output: str = "margin", alpha: float | None = None,
                     targets=None, eq9: bool = True, own_gram: bool = False,
                     row_block_size: int | None = None, n_models: int | None = None,
                     folds: int | None = None, client=None) -> StoreStats:
    """The statistics pass over the fitting models (see the module docstring).

    ``output``: ``"margin"`` or ``"correctness"``. ``eq9``: training-example targets use only
    the models that exclude them. ``own_gram``: also accumulate the per-target Gram of the
    own-row targets (OLS/ridge need it; d²·8 bytes each, per fold with ``folds``).
    ``n_models``: only the first n fitting models (by model index). ``folds``: also keep
    the statistics of each of that many contiguous folds (ridge's cross-validation).
    """
    from ...fit.dataset import target_positions
    from ...fit.splits import fold_bounds
    from ...fit.stats import compute_stats
    from ...scheduling import compute

    if output not in ("margin", "correctness"):
        raise InputError(f"output must be 'margin' or 'correctness', not {output!r}")
    rows, alpha = _select_rows(ds, alpha, n_models)
    tpos = target_positions(ds.sizes["target"], targets)
    X = ds["mask"].data[rows]
    Y = ds["margin"].data[rows][:, tpos].astype(np.float64)
    if output == "correctness":
        Y = Y.map_blocks(correctness, dtype=np.float64)
    if "target_train_index" in ds.coords and eq9:
        tti = np.asarray(ds["target_train_index"].values, dtype=np.int64)[tpos]
    else:
        tti = np.full(tpos.size, -1, np.int64)
    has_nan = np.asarray(compute([da.isnan(Y).any(axis=0)], client=client)[0])
    own = has_nan | (tti >= 0)
    sh_t, own_t = np.flatnonzero(~own), np.flatnonzero(own)
    row_block = int(row_block_size or config.get("solve.row-block-size", 8192))
    bounds = None if folds is None else fold_bounds(rows.size, int(folds))
    shared = shared_folds = None
    if sh_t.size:
        parts = [p.to_numpy() for p in compute_stats(X, Y[:, sh_t], bounds,
                                                     row_block_size=row_block, client=client)]
        shared = parts[0]
        for p in parts[1:]:
            shared = shared + p
        shared_folds = parts if bounds is not None else None
    own_stats = own_folds = None
    if own_t.size:
        if own_gram:
            need = own_t.size * X.shape[1] ** 2 * 8 * (1 if bounds is None else len(bounds))
            limit = int(config.get("estimators.own-gram-bytes", 2 * 2**30))
            if need > limit:
                raise InputError(
                    f"OLS/ridge for {own_t.size} target(s) with their own rows (NaN margins or "
                    f"eq. 9) needs {need / 2**30:.1f} GiB of per-target Gram matrices (limit "
                    f"{limit / 2**30:.1f} GiB, setting dmdask.estimators.own-gram-bytes); pass "
                    f"eq9=False or fewer targets")
        parts = _own_row_stats(X, Y[:, own_t], tti[own_t], want_gram=own_gram,
                               row_block=row_block, client=client, bounds=bounds)
        own_stats = _sum_own_stats(parts)
        own_folds = parts if bounds is not None else None
    return StoreStats(output=output, alpha=alpha, rows=rows, targets=tpos, shared_targets=sh_t,
                      own_targets=own_t, shared=shared, own=own_stats, eq9=eq9,
                      info={"n_nan_targets": int(has_nan.sum()),
                            "n_eq9_targets": int((tti >= 0).sum())},
                      fold_bounds=bounds, shared_folds=shared_folds, own_folds=own_folds)


# ------------------------------------------------------------------ cores (pure arrays)
def dom_from_stats(n, s, C, sy):
    """Difference of means from statistics. ``n`` scalar or [T]; ``s`` [d] or [d, T];
    ``C`` [d, T]; ``sy`` [T]. Returns (infl [T, d], bias [T]); NaN where undefined."""
    n = np.asarray(n, np.float64)
    s = np.asarray(s, np.float64)
    C = np.asarray(C, np.float64)
    sy = np.asarray(sy, np.float64)
    if s.ndim == 1:
        s = s[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        n_out = n - s
        infl = np.where((s > 0) & (n_out > 0), C / s - (sy - C) / n_out, np.nan)
        mbar = s / n
        bias = sy / n - np.where(mbar > 0, infl * mbar, 0.0).sum(0)
    return infl.T, bias


def least_squares_from_stats(n, G, s, c, sy, *, lam: float = 0.0, rcond: float = 1e-10,
                             light_ridge: float | None = None):
    """OLS/ridge with intercept from statistics of one design: ``G`` [d, d], ``s`` [d],
    ``c`` [d, T] (or [d]), ``sy`` [T]; ``n`` may be a float (weighted rows).

    ``lam > 0``: ridge (G_c + nλI) w = c_c. ``lam == 0``: min-norm OLS w = G_c⁺ c_c
    (eigenvalues ≤ rcond·λ_max dropped), or with ``light_ridge=ε`` the ridge
    (G_c + ε·tr(G_c)/d·I) w = c_c. Returns (w [T, d], b [T])."""
    G = np.asarray(G, np.float64)
    s = np.asarray(s, np.float64)
    c = np.asarray(c, np.float64)
    one = c.ndim == 1
    c = c[:, None] if one else c
    sy = np.atleast_1d(np.asarray(sy, np.float64))
    n = float(n)
    Gc = G - np.outer(s, s) / n
    cc = c - np.outer(s, sy) / n
    # columns constant over the rows (in all or in none of them, e.g. the target's own column
    # under eq. 9) get weight exactly 0; the solve runs on the others
    var = np.diagonal(Gc)
    live = np.flatnonzero(var > 1e-12 * max(float(var.max(initial=0.0)), 1e-300))
    Gl, cl = Gc[np.ix_(live, live)], cc[live]
    w = np.zeros_like(cc)
    if lam > 0 or light_ridge:
        shift = n * lam if lam > 0 else light_ridge * np.trace(Gl) / max(live.size, 1)
        w[live] = np.linalg.solve(Gl + shift * np.eye(live.size), cl)
    elif live.size:
        ev, V = np.linalg.eigh((Gl + Gl.T) / 2)
        keep = ev > rcond * max(ev.max(initial=0.0), 0.0)
        inv = np.where(keep, 1.0 / np.where(keep, ev, 1.0), 0.0)
        w[live] = V @ (inv[:, None] * (V.T @ cl))
    b = (sy - s @ w) / n
    return w.T, b


def ridge_lambda_grid(n, G, s, *, n_lambdas: int | None = None,
                      ratio_range=None) -> np.ndarray:
    """Ridge's λ grid, descending: ``n_lambdas`` values log-spaced over ``ratio_range`` × the
    mean column variance tr(G_c)/(n·d) of all fitting models (settings
    ``dmdask.estimators.ridge-lambdas`` and ``ridge-lambda-range``), so the grid is the same
    for every fold and free of the masks' scale."""
    n_lambdas = int(n_lambdas or config.get("estimators.ridge-lambdas", 25))
    lo, hi = (float(v) for v in (ratio_range or config.get("estimators.ridge-lambda-range",
                                                             [1e-4, 1e2])))
    if n_lambdas < 1 or not 0 < lo <= hi:
        raise InputError(f"ridge λ grid: need n_lambdas >= 1 and 0 < low <= high, got "
                         f"{n_lambdas}, [{lo}, {hi}]")
    G = np.asarray(G, np.float64)
    s = np.asarray(s, np.float64).ravel()
    n = float(n)
    var = (np.diagonal(G) - s * s / n) / n
    scale = float(var.mean()) if var.size and var.mean() > 0 else 1.0
    return scale * np.logspace(np.log10(hi), np.log10(lo), n_lambdas)


def _ridge_eig(n, G, s, c, sy):
    """Centred problem of one design in the eigenbasis of its live columns: (live, V, ev,
    q = Vᵀc_c, μ, ȳ)."""
    n = float(n)
    mu = s / n
    ybar = sy / n
    Gc = G - n * np.outer(mu, mu)
    cc = c - n * np.outer(mu, ybar)
    var = np.diagonal(Gc)
    live = np.flatnonzero(var > 1e-12 * max(float(var.max(initial=0.0)), 1e-300))
    ev, V = np.linalg.eigh((Gc[np.ix_(live, live)] + Gc[np.ix_(live, live)].T) / 2)
    return live, V, np.maximum(ev, 0.0), V.T @ cc[live], mu, ybar


def ridge_cv_from_folds(folds, lams) -> np.ndarray:
    """Cross-validated MSE [T, L] of ridge (G_c + n_trλI) w = c_c over the λ grid ``lams``.

    ``folds``: per fold ``(n, G [d, d], s [d], C [d, T], sy [T], syy [T])`` of its rows (one
    design shared by the T targets). For fold k the model is fitted on the other folds (their
    summed statistics) and its validation MSE computed from fold k's statistics centred at
    the training means: SSE = S_yy − 2wᵀS_xy + wᵀS_xx w. Folds without rows are skipped; the
    result is the mean over folds (NaN where no fold has rows)."""
    lams = np.asarray(lams, np.float64)
    F = [tuple(np.asarray(a, np.float64) for a in f) for f in folds]
    tot = [sum(f[k] for f in F) for k in range(6)]
    C0 = np.atleast_2d(tot[3].T).T if tot[3].ndim == 1 else tot[3]
    T = C0.shape[1]
    acc = np.zeros((T, lams.size))
    cnt = np.zeros(T)
    for n_v, G_v, s_v, C_v, sy_v, syy_v in F:
        if n_v <= 0:
            continue
        C_v = C_v.reshape(-1, T)
        sy_v, syy_v = np.atleast_1d(sy_v), np.atleast_1d(syy_v)
        n_t = tot[0] - n_v
        if n_t < 2:
            continue
        live, V, ev, q, mu, ybar = _ridge_eig(n_t, tot[1] - G_v, tot[2] - s_v,
                                              C0 - C_v, np.atleast_1d(tot[4]) - sy_v)
        ml = mu[live]
        sv = s_v[live]
        Sxx = (G_v[np.ix_(live, live)] - np.outer(sv, ml) - np.outer(ml, sv)
               + n_v * np.outer(ml, ml))
        Sxy = C_v[live] - np.outer(sv, ybar) - np.outer(ml, sy_v) + n_v * np.outer(ml, ybar)
        Syy = syy_v - 2 * ybar * sy_v + n_v * ybar**2
        A = V.T @ Sxx @ V
        B = V.T @ Sxy
        for j, lam in enumerate(lams):
            u = q / (ev + n_t * lam)[:, None]
            sse = Syy - 2 * (u * B).sum(0) + (u * (A @ u)).sum(0)
            acc[:, j] += sse / n_v
        cnt += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt[:, None] > 0, acc / cnt[:, None], np.nan)


def _ridge_refit(n, G, s, c, sy, lam_t):
    """Ridge on all rows with a λ per target: (w [T, d], b [T])."""
    c = np.asarray(c, np.float64).reshape(len(s), -1)
    sy = np.atleast_1d(np.asarray(sy, np.float64))
    live, V, ev, q, mu, ybar = _ridge_eig(n, np.asarray(G, np.float64),
                                          np.asarray(s, np.float64), c, sy)
    w = np.zeros_like(c)
    w[live] = V @ (q / (ev[:, None] + float(n) * np.asarray(lam_t)[None, :]))
    b = (sy - np.asarray(s, np.float64) @ w) / float(n)
    return w.T, b


# ------------------------------------------------------------------ estimators
def _wrap(ds, st: StoreStats, W, b, *, estimator, options):
    """Full-size (target, train) scores for the targets ``st.targets``."""
    sub = ds.isel(target=st.targets)
    attrs = {"n_models": int(st.rows.size), "alpha": st.alpha, "eq9": int(st.eq9),
             "n_nan_targets": st.info.get("n_nan_targets", 0),
             "n_eq9_targets": st.info.get("n_eq9_targets", 0),
             "n_undefined": int(np.isnan(W).sum()),
             "options": repr(options)}
    return make_scores(W, bias=b, estimator=estimator, source=_src(ds), output=st.output,
                       ds=sub, attrs=attrs)


def _src(ds):
    meta = ds.attrs.get("dmdask", {})
    return str(meta.get("path", "run store")) if isinstance(meta, dict) else "run store"


def _stats(ds, stats, *, output, alpha, targets, eq9, own_gram, client, n_models=None,
           folds=None):
    if stats is not None:
        if stats.output != output:
            raise InputError(f"statistics are of output {stats.output!r}, need {output!r}")
        if own_gram and stats.own is not None and stats.own.G is None:
            raise InputError("these statistics lack the per-target Gram (own_gram=True) that "
                             "OLS/ridge need for own-row targets")
        if folds is not None and (stats.fold_bounds is None
                                  or len(stats.fold_bounds) != folds + 1):
            raise InputError(f"ridge's cross-validation needs the statistics of {folds} folds "
                             f"(store_statistics(..., folds={folds})), or pass lam=")
        return stats
    return store_statistics(ds, output=output, alpha=alpha, targets=targets, eq9=eq9,
                            own_gram=own_gram, n_models=n_models, folds=folds, client=client)


def difference_of_means(ds, *, output: str = "margin", alpha: float | None = None,
                        targets=None, eq9: bool = True, stats: StoreStats | None = None,
                        n_models: int | None = None, client=None) -> xr.DataArray:
    """Feldman–Zhang difference of means (REFERENCE §2.3, paper eq. 15) on ``output``
    (``"margin"`` or ``"correctness"``), with the bias b = ȳ − inflᵀm̄. Under eq. 9 the
    target's own column is NaN (no model that excludes it contains it)."""
    st = _stats(ds, stats, output=output, alpha=alpha, targets=targets, eq9=eq9,
                own_gram=False, client=client, n_models=n_models)
    T, d = st.targets.size, ds.sizes["train"]
    W = np.full((T, d), np.nan)
    b = np.full(T, np.nan)
    if st.shared is not None:
        sh = st.shared
        W[st.shared_targets], b[st.shared_targets] = dom_from_stats(sh.n, sh.s, sh.C, sh.sy)
    if st.own is not None:
        o = st.own
        W[st.own_targets], b[st.own_targets] = dom_from_stats(o.n, o.s, o.C, o.sy)
    return _wrap(ds, st, W, b, estimator=f"dom_{output}",
                 options={"output": output, "eq9": eq9})


def _least_squares(ds, *, estimator, output, alpha, targets, eq9, stats, client, n_models,
                   **kw):
    st = _stats(ds, stats, output=output, alpha=alpha, targets=targets, eq9=eq9,
                own_gram=True, client=client, n_models=n_models)
    T, d = st.targets.size, ds.sizes["train"]
    W = np.full((T, d), np.nan)
    b = np.full(T, np.nan)
    if st.shared is not None:
        sh = st.shared
        W[st.shared_targets], b[st.shared_targets] = least_squares_from_stats(
            sh.n, sh.G, sh.s, sh.C, sh.sy, **kw)
    if st.own is not None:
        o = st.own
        for k, t in enumerate(st.own_targets):
            if o.n[k] < 2:
                continue  # too few rows: NaN, counted in n_undefined
            w, bb = least_squares_from_stats(o.n[k], o.G[k], o.s[:, k], o.C[:, k], o.sy[k], **kw)
            W[t], b[t] = w[0], bb[0]
    return _wrap(ds, st, W, b, estimator=estimator, options={"output": output, "eq9": eq9, **kw})


def ols(ds, *, output: str = "margin", rcond: float = 1e-10, light_ridge: float | None = None,
        alpha: float | None = None, targets=None, eq9: bool = True,
        stats: StoreStats | None = None, n_models: int | None = None,
        client=None) -> xr.DataArray:
    """Least-norm OLS with intercept, w = G_c⁺ c_c (REFERENCE §2.4), or lightly ridged with
    ``light_ridge=ε`` (shift ε·tr(G_c)/d). Under eq. 9 the target's own column is 0 (it is
    constant over the rows used; min-norm puts no weight on it)."""
    return _least_squares(ds, estimator="ols", output=output, alpha=alpha, targets=targets,
                          eq9=eq9, stats=stats, client=client, n_models=n_models, rcond=rcond,
                          light_ridge=light_ridge)


def ridge_folds(n_models: int) -> int:
    """Number of CV folds ridge uses with ``n_models`` fitting models: the setting
    ``dmdask.estimators.ridge-folds`` (LASSO's default 5), at most one per model."""
    return max(2, min(int(config.get("estimators.ridge-folds", 5)), int(n_models)))


def ridge(ds, *, lam: float | None = None, folds: int | None = None,
          output: str = "margin", alpha: float | None = None, targets=None, eq9: bool = True,
          stats: StoreStats | None = None, n_models: int | None = None,
          client=None) -> xr.DataArray:
    """Ridge with intercept, (G_c + nλI) w = c_c (REFERENCE §1.4: the (1/2n)‖·‖² + (λ/2)‖w‖²
    objective in raw-mask space). λ per target by ``folds``-fold cross-validation on the
    fitting models as LASSO's (module docstring; grid :func:`ridge_lambda_grid`), recorded in
    the ``ridge_lambda`` coordinate; ``lam=`` fixes it instead."""
    if lam is not None:
        if not lam > 0:
            raise InputError(f"ridge needs lam > 0, got {lam} (use ols for λ = 0)")
        sc = _least_squares(ds, estimator="ridge", output=output, alpha=alpha, targets=targets,
                            eq9=eq9, stats=stats, client=client, n_models=n_models,
                            lam=float(lam))
        return sc.assign_coords(ridge_lambda=("target", np.full(sc.sizes["target"],
                                                                float(lam))))
    from ...fit.solve.grid import select_lambda

    if folds is None:
        n_rows = stats.rows.size if stats is not None else _select_rows(ds, alpha, n_models)[0].size
        folds = ridge_folds(n_rows)
    st = _stats(ds, stats, output=output, alpha=alpha, targets=targets, eq9=eq9,
                own_gram=True, client=client, n_models=n_models, folds=int(folds))
    T, d = st.targets.size, ds.sizes["train"]
    W = np.full((T, d), np.nan)
    b = np.full(T, np.nan)
    lam_t = np.full(T, np.nan)
    edge = 0

    def solve(parts, total, cols):
        nonlocal edge
        grid = ridge_lambda_grid(total[0], total[1], total[2])
        k = select_lambda(ridge_cv_from_folds(parts, grid))
        edge += int(((k == 0) | (k == grid.size - 1)).sum())
        lt = grid[k]
        W[cols], b[cols] = _ridge_refit(*total[:4], total[4], lt)
        lam_t[cols] = lt

    if st.shared is not None:
        sh = st.shared
        solve([(f.n, f.G, f.s, f.C, f.sy, f.syy) for f in st.shared_folds],
              (sh.n, sh.G, sh.s, sh.C, sh.sy), st.shared_targets)
    if st.own is not None:
        o = st.own
        for k, t in enumerate(st.own_targets):
            if o.n[k] < 2:
                continue  # too few rows: NaN, counted in n_undefined
            parts = [(f.n[k], f.G[k], f.s[:, k], f.C[:, k:k + 1], f.sy[k:k + 1],
                      f.syy[k:k + 1]) for f in st.own_folds]
            solve(parts, (o.n[k], o.G[k], o.s[:, k], o.C[:, k:k + 1], o.sy[k:k + 1]), [t])
    sc = _wrap(ds, st, W, b, estimator="ridge",
               options={"output": output, "eq9": eq9, "selection": "cv", "folds": int(folds)})
    sc.attrs["selection"] = f"{int(folds)}-fold cv"
    sc.attrs["n_lambda_at_grid_edge"] = int(edge)
    return sc.assign_coords(ridge_lambda=("target", lam_t))
