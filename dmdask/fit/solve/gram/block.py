"""All work for one block of targets: the λ grid, the paths on the training split(s), the
selection of λ, the refit on all fitting rows and the conversion to raw space."""

from __future__ import annotations

import time

import numpy as np

from ....backend import to_numpy
from ..base import PathResult, to_raw
from ..grid import lambda_grid, select_lambda
from .path import gram_path
from .standardise import _std_targets, flat_targets, lambda_max
from .validation import _ValGram


def _solve_block(tr_probs, tr_stats, val_stats, full_prob, full_stats, cols, split_kind,
                 opts: dict, val_grams=None):
    """All work for one target block: paths on the training set(s), selection, refit."""
    t0 = time.perf_counter()
    xp = full_stats.xp
    cols = xp.asarray(cols)
    n_lambdas, ratio = opts["n_lambdas"], opts["lambda_ratio"]
    tol, max_iter = opts["tol"], opts["max_iter"]
    T = int(cols.size)
    _, q_full, yv_full, mu_f, sig_f, ybar_f = _std_targets(full_stats, cols)
    # targets constant on the rows the grid comes from get no path: λ_max = 0, w = 0
    # (holdout: a target constant on the training rows shows no signal to select a λ by)
    flat_tr = [flat_targets(st, cols, full_stats) for st in tr_stats]
    no_path = flat_targets(full_stats, cols)
    if split_kind == "holdout":
        no_path |= flat_tr[0]
        q_grid = _std_targets(tr_stats[0], cols)[1]
    else:
        q_grid = q_full
    lam_max = np.where(no_path, 0.0, to_numpy(lambda_max(q_grid)))
    lambdas = lambda_grid(lam_max, n_lambdas, ratio)
    lam_x = xp.asarray(lambdas)
    n_iter = np.zeros(T, dtype=np.int64)
    conv = np.ones(T, dtype=bool)
    vals = []
    W_warm = None
    if val_grams is None:
        val_grams = [_ValGram(vst, st.sigma, prob.fast)
                     for prob, st, vst in zip(tr_probs, tr_stats, val_stats, strict=True)]
    for prob, st, vg, flat in zip(tr_probs, tr_stats, val_grams, flat_tr, strict=True):
        _, q_tr, yv_tr, mu, sig, ybar = _std_targets(st, cols)
        fn = vg.fn(mu, sig, ybar, cols)
        res = gram_path(prob, q_tr, yv_tr, lam_x, tol=tol, max_iter=max_iter,
                        val_fn=lambda W, idx, fn=fn: fn(W, idx),
                        early_stop=opts["early_stop"], min_lams_to_try=opts["min_lams_to_try"],
                        flat=flat | no_path)
        vals.append(res["val"])
        n_iter += res["n_iter"]
        conv &= res["converged"]
        if split_kind == "holdout":
            W_warm = res["W_best"]
    val_path = np.mean(vals, axis=0) if len(vals) > 1 else vals[0]
    best = select_lambda(val_path)
    rows = np.arange(T)
    lam = lambdas[rows, best]
    if W_warm is not None:
        # holdout: one solve at the chosen λ from the training solution there
        W = xp.zeros_like(W_warm)
        go = np.flatnonzero(~no_path)
        if go.size:
            g = xp.asarray(go)
            Wg = W_warm[:, g]
            C0 = q_full[:, g] - full_prob.matvec(Wg)
            lg = xp.asarray(lam[go])
            Wg, _, it, c = full_prob.solve(q_full[:, g], yv_full[g], lg, Wg, C0, lg, tol,
                                           max_iter)
            W[:, g] = Wg
            n_iter[go] += to_numpy(it)
            conv[go] &= to_numpy(c)
    else:
        # cv: the path on all rows down to each target's chosen λ
        res = gram_path(full_prob, q_full, yv_full, lam_x, tol=tol, max_iter=max_iter,
                        stop_index=best, flat=no_path)
        W = res["W_best"]
        n_iter += res["n_iter"]
        conv &= res["converged"]
    w_raw, b_raw = to_raw(W.T, mu_f, sig_f, ybar_f)
    return PathResult(
        weight=to_numpy(w_raw),
        bias=to_numpy(b_raw),
        lam=lam,
        lambdas=lambdas,
        val_mse_path=val_path,
        val_mse=val_path[rows, best],
        n_iter=n_iter,
        converged=conv,
        n_rows=np.full(T, full_stats.n, dtype=np.int64),
        solver="gram",
        info={"seconds": time.perf_counter() - t0, "method": full_prob.method},
    )
