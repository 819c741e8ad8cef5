"""The Gram solver: the LASSO path of many targets that share one design, from sufficient
statistics only (DESIGN.md "Solving many LASSOs that share one design", REFERENCE.md §1).

Per target block, on the standardised centred problem scaled by 1/n
(Q = X̃_cᵀX̃_c/n, q = X̃_cᵀy_c/n, yv = ‖y_c‖²/n), for each λ on the grid:

    minimise ½ wᵀQw − qᵀw + ½yv + λ‖w‖₁   (= (1/2n)‖y_c − X̃_c w‖² + λ‖w‖₁)

* **Working set.** The correlation C = q − QW is kept for all d coordinates (it is the
  negative gradient, so the KKT check is free); a λ starts from the warm start's support plus
  the sequential strong rule |C_jt| ≥ 2λ_t − λ_prev,t, union over the targets of the block.
* **Inner solver** on the working set U (cost |U|²·T per sweep/iteration, never d²):
  ``method="cd"`` — cyclic coordinate descent for all targets at once, in blocks of
  ``cd_block`` coordinates: exact updates inside a block (rank-1 on the block's rows), then one
  GEMM ``C_U −= Q_U,B ΔW_B``; ``method="fista"`` — accelerated proximal gradient with
  per-target adaptive restart, one GEMM ``Q_UU W_U`` per iteration.
* **Stop** per target on the duality gap (§1.5) of the full problem:
  gap ≤ tol·‖y_c‖²/(2n); coordinates violating KKT outside U join U, and the inner solve
  continues. Converged targets leave the computation.

Selection, refit and raw-space conversion follow :mod:`dmdask.solve.base`. Which inner
solver wins was measured in ``benchmarks/bench_solve.py`` (see ``benchmarks/RESULTS_solve.md``);
the default is the winner (setting ``dmdask.solve.gram-method``).
"""

from __future__ import annotations

import time

import dask
import numpy as np

from .. import config
from ..backend import get_namespace, to_numpy
from ..stats import SufficientStats, _compute, compute_stats, group_bounds_for
from .base import PathOptions, PathResult, Split, UnsupportedTargets, to_raw
from .grid import lambda_grid, select_lambda, should_stop

__all__ = ["GramSolver", "gram_path", "solve_from_stats", "lambda_max"]

_TINY = 1e-300


def _soft(z, t, xp):
    return xp.sign(z) * xp.maximum(xp.abs(z) - t, 0.0)


def lambda_max(q):
    """λ_max [T] of the standardised problem: ‖X̃ᵀy_c‖∞/n = max_j |q_jt|."""
    xp = get_namespace(q)
    return xp.abs(q).max(axis=0)


def _gap(yv, lam, W, C, q, cinf):
    """Duality gap (§1.5) per target from the statistics; W, C, q restricted to any set of
    rows containing W's support, ``cinf`` = max |C| over all d coordinates."""
    xp = get_namespace(W)
    qw = xp.sum(q * W, axis=0)
    wc = xp.sum(W * C, axis=0)
    R = xp.maximum(yv - qw - wc, 0.0)  # ‖r‖²/n
    ry = yv - qw  # r·y_c / n
    s = xp.maximum(xp.maximum(lam, cinf), _TINY)
    l1 = xp.abs(W).sum(axis=0)
    return R / 2 + lam * l1 + lam**2 * R / (2 * s**2) - lam * ry / s


def _power_L(Q, xp, iters=30):
    v = xp.ones(Q.shape[0]) / np.sqrt(Q.shape[0])
    lam = 1.0
    for _ in range(iters):
        w = Q @ v
        lam = float(xp.linalg.norm(w))
        if lam == 0:
            return 1.0
        v = w / lam
    return lam * 1.05 + 1e-12


class _Problem:
    """The standardised problem of one training set, shared by all target blocks."""

    def __init__(self, Q, method, cd_block):
        xp = get_namespace(Q)
        self.Q = Q
        self.xp = xp
        self.diag = xp.diagonal(Q).copy()
        self.usable = self.diag > 0
        self.method = method
        self.cd_block = cd_block
        self._L = None
        # Fixed-size subsets: X̃_c σ = X_c 1 = 0, so Q σ = 0 exactly and w̃ → w̃ + tσ changes
        # only the L1 term (REFERENCE §0, §1 checks). CD and FISTA crawl along such a flat
        # direction; an exact line search along it (a weighted median) removes the crawl.
        self.gauge = None

    def set_gauge(self, sigma):
        """Use σ as the null direction when Qσ vanishes (fixed-size sampling)."""
        xp = self.xp
        v = xp.where(self.usable, sigma, 0.0)
        nv = float(xp.linalg.norm(v))
        if nv > 0 and float(xp.linalg.norm(self.Q @ v)) <= 1e-9 * nv:
            self.gauge = v
        return self

    def gauge_shift(self, W, U):
        """Move W (rows U of the full vector; U must hold every usable coordinate) along the
        null direction to the L1-minimal point: t* = weighted median of −w_j/v_j, weights v_j."""
        v = self.gauge[U]
        keep = v > 0
        if not bool(keep.all()):
            vv = v[keep]
            W[keep] = self._shift(W[keep], vv)
            return W
        return self._shift(W, v)

    def _shift(self, W, v):
        xp = self.xp
        a = -W / v[:, None]
        order = xp.argsort(a, axis=0)
        a_s = xp.take_along_axis(a, order, axis=0)
        cw = xp.cumsum(v[order], axis=0)
        half = cw[-1] / 2
        idx = xp.argmax(cw >= half[None, :], axis=0)
        t = a_s[idx, xp.arange(W.shape[1])]
        return W + v[:, None] * t[None, :]

    @property
    def L(self):
        if self._L is None:
            self._L = _power_L(self.Q, self.xp)
        return self._L

    def corr(self, q, W):
        """C = q − QW using only W's nonzero rows."""
        xp = self.xp
        U = xp.flatnonzero((W != 0).any(axis=1))
        if U.size == 0:
            return q.copy()
        return q - self.Q[:, U] @ W[U]

    # ------------------------------------------------------------------ inner solvers
    def _cd(self, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_sweeps, full_U=None):
        xp = self.xp
        u = QU.shape[0]
        m = self.cd_block
        inv = 1.0 / dU
        sweeps = 0
        for sweeps in range(1, max_sweeps + 1):  # noqa: B007
            for b0 in range(0, u, m):
                b1 = min(b0 + m, u)
                cB = CU[b0:b1].copy()
                QBB = QU[b0:b1, b0:b1]
                Wold = WU[b0:b1].copy()
                for k in range(b1 - b0):
                    j = b0 + k
                    wj = WU[j]
                    wn = _soft(wj + cB[k] * inv[j], lam * inv[j], xp)
                    dlt = wn - wj
                    if not bool(xp.any(dlt)):
                        continue
                    WU[j] = wn
                    cB -= QBB[:, k : k + 1] * dlt[None, :]
                D = WU[b0:b1] - Wold
                CU -= QU[:, b0:b1] @ D
            if self.gauge is not None and full_U is not None:
                WU = self.gauge_shift(WU, full_U)
            cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
            if bool((_gap(yv, lam, WU, CU, qU, cinf) <= thr).all()):
                break
        return WU, CU, sweeps

    def _fista(self, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_iter, full_U=None,
               check_every=5):
        xp = self.xp
        L = self.L
        x = WU
        y = x.copy()
        t = xp.ones(x.shape[1])
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            grad = QU @ y - qU
            xn = _soft(y - grad / L, lam / L, xp)
            tn = (1 + xp.sqrt(1 + 4 * t * t)) / 2
            restart = xp.sum((y - xn) * (xn - x), axis=0) > 0
            mom = xp.where(restart, 0.0, (t - 1) / tn)
            tn = xp.where(restart, 1.0, tn)
            y = xn + mom[None, :] * (xn - x)
            x, t = xn, tn
            if it % check_every == 0:
                if self.gauge is not None and full_U is not None:
                    x = self.gauge_shift(x, full_U)
                    y = x.copy()
                    t = xp.ones(x.shape[1])
                CU = qU - QU @ x
                cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
                if bool((_gap(yv, lam, x, CU, qU, cinf) <= thr).all()):
                    return x, CU, it
        CU = qU - QU @ x
        return x, CU, it

    # ------------------------------------------------------------------ one λ
    def solve(self, q, yv, lam, W, C, lam_prev, tol, max_iter):
        """Solve at ``lam`` [T] from warm start W [d, T] with C = q − QW; returns
        (W, C, iterations, converged [T])."""
        xp = self.xp
        thr = tol * yv / 2
        strong = xp.abs(C) >= (2 * lam - lam_prev)[None, :]
        inU = ((W != 0).any(axis=1) | strong.any(axis=1)) & self.usable
        total = 0
        conv = xp.zeros(q.shape[1], dtype=bool)
        while True:
            U = xp.flatnonzero(inU)
            if U.size:
                QU = self.Q[xp.ix_(U, U)]
                out = xp.flatnonzero(~inU)
                cinf_out = (xp.abs(C[out]).max(axis=0) if out.size else
                            xp.zeros(q.shape[1]))
                budget = max(max_iter - total, 1)
                full_U = U if int(self.usable[U].sum()) == int(self.usable.sum()) else None
                inner = self._cd if self.method == "cd" else self._fista
                WU, _, it = inner(QU, self.diag[U], q[U], C[U].copy(), W[U].copy(), lam, yv,
                                  thr, cinf_out, budget, full_U=full_U)
                total += it
                W[U] = WU
            C = self.corr(q, W)
            cinf = xp.abs(C).max(axis=0)
            gap = _gap(yv, lam, W, C, q, cinf)
            conv = gap <= thr
            if bool(conv.all()) or total >= max_iter:
                break
            viol = ((xp.abs(C) > lam[None, :]) & ~conv[None, :]).any(axis=1) & ~inU
            viol &= self.usable
            if bool(viol.any()):
                inU |= viol
            elif not U.size:
                break
        return W, C, total, conv


def gram_path(
    prob: _Problem,
    q,
    yv,
    lambdas,
    *,
    tol: float,
    max_iter: int,
    val_fn=None,
    stop_index=None,
    early_stop: bool = False,
    min_lams_to_try: int = 10,
    W0=None,
):
    """Run the path for a block of targets.

    ``val_fn(W_std, idx) -> mse`` gives the validation MSE of the solutions of targets ``idx``;
    ``stop_index`` [T] stops each target after that grid index (refit mode). Returns a dict:
    ``val`` [T, L] (NaN where not solved), ``W_best`` (at the best validation MSE so far, or at
    ``stop_index``), ``n_iter`` [T], ``converged`` [T], ``nnz`` [T, L].
    """
    xp = prob.xp
    d, T = q.shape
    L = lambdas.shape[1]
    W = xp.zeros((d, T)) if W0 is None else W0.copy()
    C = prob.corr(q, W)
    val = np.full((T, L), np.nan)
    nnz = np.zeros((T, L), dtype=np.int64)
    W_best = W.copy()
    best = np.full(T, np.inf)
    n_iter = np.zeros(T, dtype=np.int64)
    converged = np.ones(T, dtype=bool)
    alive = np.ones(T, dtype=bool)
    last = np.full(T, L - 1) if stop_index is None else np.asarray(stop_index)
    lam_prev = lambdas[:, 0]
    for li in range(L):
        act = np.flatnonzero(alive & (li <= last))
        if act.size == 0:
            break
        a = xp.asarray(act)
        lam = lambdas[a, li]
        Wa, Ca, it, conv = prob.solve(q[:, a], yv[a], lam, W[:, a], C[:, a], lam_prev[a], tol,
                                      max_iter)
        W[:, a] = Wa
        C[:, a] = Ca
        n_iter[act] += it
        converged[act] &= to_numpy(conv)
        nnz[act, li] = to_numpy((Wa != 0).sum(axis=0))
        lam_prev = lambdas[:, li]
        if val_fn is not None:
            v = to_numpy(val_fn(Wa, a))
            val[act, li] = v
            better = v <= best[act]
            best[act] = np.where(better, v, best[act])
            upd = act[better]
            if upd.size:
                W_best[:, xp.asarray(upd)] = Wa[:, xp.asarray(np.flatnonzero(better))]
            if early_stop and li > 0:
                stop = should_stop(val[act, li - 1], v, li + 1, nnz[act, li], min_lams_to_try)
                alive[act[stop]] = False
        else:
            hit = act[last[act] == li]
            if hit.size:
                W_best[:, xp.asarray(hit)] = W[:, xp.asarray(hit)]
    return {"val": val, "W_best": W_best, "n_iter": n_iter, "converged": converged, "nnz": nnz}


def _val_fn(val_stats: SufficientStats, mu, sigma, ybar, q_index_base):
    """Validation MSE of train-standardised solutions, from the validation statistics."""
    xp = val_stats.xp

    def fn(Wstd, idx):
        cols = q_index_base[idx] if q_index_base is not None else idx
        U = xp.flatnonzero((Wstd != 0).any(axis=1))
        w = Wstd[U] / sigma[U][:, None]
        b = ybar[idx] - mu[U] @ w
        C = val_stats.C[U][:, cols]
        wc = xp.sum(w * C, axis=0)
        wGw = xp.sum((val_stats.G[xp.ix_(U, U)] @ w) * w, axis=0)
        sw = val_stats.s[U] @ w
        sse = (val_stats.syy[cols] - 2 * wc - 2 * b * val_stats.sy[cols] + wGw + 2 * b * sw
               + val_stats.n * b**2)
        return sse / val_stats.n

    return fn


# ---------------------------------------------------------------------- block tasks
def _solve_block(tr_probs, tr_stats, val_stats, full_prob, full_stats, cols, split_kind,
                 opts: dict):
    """All work for one target block: paths on the training set(s), selection, refit."""
    t0 = time.perf_counter()
    xp = get_namespace(full_stats.G)
    cols = xp.asarray(cols)
    n_lambdas, ratio = opts["n_lambdas"], opts["lambda_ratio"]
    tol, max_iter = opts["tol"], opts["max_iter"]
    T = int(cols.size)
    _, q_full, yv_full, mu_f, sig_f, ybar_f = _std_targets(full_stats, cols)
    if split_kind == "holdout":
        q_tr0 = _std_targets(tr_stats[0], cols)[1]
        lambdas = lambda_grid(to_numpy(lambda_max(q_tr0)), n_lambdas, ratio)
    else:
        lambdas = lambda_grid(to_numpy(lambda_max(q_full)), n_lambdas, ratio)
    lam_x = xp.asarray(lambdas)
    n_iter = np.zeros(T, dtype=np.int64)
    conv = np.ones(T, dtype=bool)
    vals = []
    W_warm = None
    for _k, (prob, st, vst) in enumerate(zip(tr_probs, tr_stats, val_stats, strict=True)):
        _, q_tr, yv_tr, mu, sig, ybar = _std_targets(st, cols)
        fn = _val_fn(vst, mu, sig, ybar, cols)
        res = gram_path(prob, q_tr, yv_tr, lam_x, tol=tol, max_iter=max_iter,
                        val_fn=lambda W, idx, fn=fn: fn(W, idx),
                        early_stop=opts["early_stop"], min_lams_to_try=opts["min_lams_to_try"])
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
        C0 = full_prob.corr(q_full, W_warm)
        W, _, it, c = full_prob.solve(q_full, yv_full, xp.asarray(lam), W_warm, C0,
                                      xp.asarray(lam), tol, max_iter)
        n_iter += it
        conv &= to_numpy(c)
    else:
        # cv: the path on all rows down to each target's chosen λ
        res = gram_path(full_prob, q_full, yv_full, lam_x, tol=tol, max_iter=max_iter,
                        stop_index=best)
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


def _std_targets(st: SufficientStats, cols):
    """Standardised (Q-free) target statistics of targets ``cols``: (None, q, yv, mu, σ, ȳ)."""
    xp = st.xp
    mu = st.mu
    sigma = st.sigma
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    sy = st.sy[cols]
    Cc = st.C[:, cols] - xp.outer(st.s, sy) / st.n
    q = Cc * (inv[:, None] / st.n)
    yv = xp.maximum(st.syy[cols] - sy**2 / st.n, 0.0) / st.n
    return None, q, yv, mu, sigma, sy / st.n


def _std_gram(st: SufficientStats):
    xp = st.xp
    sigma = st.sigma
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    Gc = st.G - xp.outer(st.s, st.s) / st.n
    return (Gc * inv[:, None]) * (inv[None, :] / st.n)


def solve_from_stats(
    groups: list[SufficientStats],
    split: Split,
    options: PathOptions = PathOptions(),
    *,
    method: str | None = None,
    client=None,
) -> PathResult:
    """Path, selection and refit for all targets from the per-group statistics of
    :func:`dmdask.stats.compute_stats` (groups as :func:`group_bounds_for` makes them)."""
    method = method or options.extra.get("method") or config.get("solve.gram-method", "fista")
    if method not in ("cd", "fista"):
        raise UnsupportedTargets(f"unknown Gram method {method!r} (cd | fista)")
    cd_block = int(options.extra.get("cd_block", 64))
    full = SufficientStats.sum(groups)
    if split.kind == "holdout":
        tr_stats = [groups[1]]
        val_stats = [groups[0]]
    else:
        tr_stats = [full - g for g in groups]
        val_stats = list(groups)
    tr_probs = [_Problem(_std_gram(st), method, cd_block).set_gauge(st.sigma)
                for st in tr_stats]
    full_prob = _Problem(_std_gram(full), method, cd_block).set_gauge(full.sigma)
    T = full.n_targets
    tb = int(options.target_block_size or config.get("solve.target-block-size", 512))
    blocks = [np.arange(i, min(i + tb, T)) for i in range(0, T, tb)]
    opts = {
        "n_lambdas": options.n_lambdas, "lambda_ratio": options.lambda_ratio, "tol": options.tol,
        "max_iter": options.max_iter, "early_stop": options.early_stop,
        "min_lams_to_try": options.min_lams_to_try,
    }
    if len(blocks) == 1 and client is None:
        parts = [_solve_block(tr_probs, tr_stats, val_stats, full_prob, full, blocks[0],
                              split.kind, opts)]
    else:
        shared = (tr_probs, tr_stats, val_stats, full_prob, full)
        if client is not None:
            shared = client.scatter(shared, broadcast=True)
            # one key, sent once per worker
            futs = [client.submit(_solve_block_shared, shared, b, split.kind, opts, pure=False)
                    for b in blocks]
            if options.progress:
                from distributed import as_completed
                from tqdm.auto import tqdm

                for _ in tqdm(as_completed(futs), total=len(futs), desc="lasso paths"):
                    pass
            parts = client.gather(futs)
        else:
            sh = dask.delayed(shared, traverse=False)
            tasks = [dask.delayed(_solve_block_shared, pure=True)(sh, b, split.kind, opts)
                     for b in blocks]
            parts = list(_compute(tasks, progress=options.progress, desc="lasso paths"))
    res = PathResult.concat(parts)
    res.solver = "gram"
    res.info = {"method": method, "blocks": len(blocks),
                "seconds": [p.info.get("seconds") for p in parts]}
    return res.validate()


def _solve_block_shared(shared, cols, split_kind, opts):
    return _solve_block(*shared, cols, split_kind, opts)


class GramSolver:
    """LASSO paths of all targets at once from one pass of sufficient statistics.

    Requires that every target use the same rows: no NaN outputs, no training-example targets
    (those go to the streaming solver; ``fit_datamodels(solver="auto")`` routes them)."""

    name = "gram"
    per_target_rows = False
    selections = ("holdout", "cv")

    def __init__(self, method: str | None = None):
        self.method = method

    def fit(self, X, Y, *, split: Split = Split(), options: PathOptions = PathOptions(),
            target_train_index=None, client=None) -> PathResult:
        if target_train_index is not None and np.any(np.asarray(target_train_index) >= 0):
            bad = np.flatnonzero(np.asarray(target_train_index) >= 0)
            raise UnsupportedTargets(
                f"the Gram solver cannot fit training-example targets (eq. 9: rows differ per "
                f"target); targets {bad[:10].tolist()}{'…' if bad.size > 10 else ''} — use "
                "solver='saga' or 'auto'")
        n = X.shape[0]
        bounds = group_bounds_for(n, split)
        groups = compute_stats(X, Y, bounds, row_block_size=options.row_block_size,
                               client=client, progress=options.progress)
        return solve_from_stats(groups, split, options, method=self.method, client=client)
