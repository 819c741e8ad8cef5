"""The Gram solver against scikit-learn, KKT/duality gap at every path point, λ_max, and
λ selection (holdout, CV) against brute-force loops and LassoCV."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Lasso, LassoCV
from sklearn.model_selection import KFold

from dmdask.fit.solve.base import PathOptions, Split
from dmdask.fit.solve.gram import (
    GramSolver,
    _gap,
    _Problem,
    _std_gram,
    _std_targets,
    _ValGram,
    gram_path,
    lambda_max,
    solve_from_stats,
)
from dmdask.fit.solve.gram.newton import newton_step
from dmdask.fit.solve.grid import fold_bounds, holdout_size, lambda_grid, select_lambda
from dmdask.fit.stats import compute_stats, group_bounds_for

METHODS = ["cd", "fista"]


def _problem(n=400, d=30, T=3, seed=0, fixed=False, k=5, noise=1.0):
    rng = np.random.default_rng(seed)
    if fixed:
        X = np.argsort(rng.random((n, d)), axis=1) < d // 2
    else:
        X = rng.random((n, d)) < 0.5
    W = np.zeros((d, T))
    for t in range(T):
        W[rng.choice(d, k, replace=False), t] = rng.standard_normal(k)
    Y = X @ W + noise * rng.standard_normal((n, T)) + 2.0
    return X, Y


def _standardise(X):
    Xf = X.astype(np.float64)
    mu = Xf.mean(0)
    sd = Xf.std(0)
    return (Xf - mu) / np.where(sd > 0, sd, 1.0), mu, sd


def _recorder():
    """A ``val_fn`` for :func:`gram_path` that keeps every path point (W_std per λ)."""
    points = []

    def record(W, idx):
        points.append(W.copy())
        return np.zeros(len(idx))

    return points, record


def _path(X, Y, method, n_lambdas=12, ratio=1e-2, tol=1e-12, fixed_gauge=True):
    """Every path point (W_std per λ) of the full-data problem."""
    st = compute_stats(X, Y)[0]
    prob = _Problem(_std_gram(st), method, 8)
    if fixed_gauge:
        prob.set_gauge(st.sigma)
    _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
    lams = lambda_grid(lambda_max(q), n_lambdas, ratio)
    points, record = _recorder()

    res = gram_path(prob, q, yv, lams, tol=tol, max_iter=100000, val_fn=record)
    return st, prob, q, yv, lams, points, res


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fixed", [False, True])
def test_matches_sklearn_along_path(method, fixed):
    X, Y = _problem(seed=1, fixed=fixed)
    st, prob, q, yv, lams, points, res = _path(X, Y, method)
    assert res["converged"].all()
    Xs, mu, sd = _standardise(X)
    for li in range(0, lams.shape[1], 3):
        for t in range(Y.shape[1]):
            m = Lasso(alpha=lams[t, li], tol=1e-14, max_iter=200000).fit(Xs, Y[:, t])
            w = points[li][:, t]
            scale = max(np.abs(m.coef_).max(), 1e-12)
            assert np.abs(w - m.coef_).max() <= 1e-4 * scale, (li, t)
            # raw-space predictions agree with standardised ones
            wr = np.where(sd > 0, w / np.where(sd > 0, sd, 1), 0)
            br = Y[:, t].mean() - mu @ wr
            np.testing.assert_allclose(X @ wr + br, m.predict(Xs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_kkt_and_gap_at_every_path_point(method):
    X, Y = _problem(seed=2, n=300, d=25, fixed=True)
    tol = 1e-10
    st, prob, q, yv, lams, points, res = _path(X, Y, method, n_lambdas=15, ratio=1e-3, tol=tol)
    Xs, *_ = _standardise(X)
    n = X.shape[0]
    Yc = Y - Y.mean(0)
    for li, W in enumerate(points):
        for t in range(Y.shape[1]):
            lam = lams[t, li]
            r = Yc[:, t] - Xs @ W[:, t]
            g = Xs.T @ r / n
            act = W[:, t] != 0
            kkt_tol = 1e-4 * lams[t, 0]
            assert np.all(np.abs(g[act] - lam * np.sign(W[act, t])) <= kkt_tol)
            assert np.all(np.abs(g[~act]) <= lam * (1 + 1e-4) + 1e-12)
            assert abs(r.sum()) <= 1e-8 * np.abs(Yc[:, t]).sum()
            # duality gap from the statistics equals the brute-force gap and meets tol
            C = q[:, t] - prob.Q @ W[:, t]
            gap = _gap(yv[t], lam, W[:, t:t + 1], C[:, None], q[:, t:t + 1],
                       np.abs(C).max())[0]
            P = (r @ r) / (2 * n) + lam * np.abs(W[:, t]).sum()
            theta = r / max(n * lam, np.abs(Xs.T @ r).max())
            D = (Yc[:, t] @ Yc[:, t]) / (2 * n) - n * lam**2 / 2 * np.sum(
                (theta - Yc[:, t] / (n * lam)) ** 2)
            assert gap == pytest.approx(P - D, abs=1e-9 * yv[t])
            assert gap <= tol * yv[t] / 2 * (1 + 1e-6) + 1e-15


def test_lambda_max():
    X, Y = _problem(seed=3)
    st = compute_stats(X, Y)[0]
    prob = _Problem(_std_gram(st), "cd", 8)
    _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
    lm = lambda_max(q)
    Xs, *_ = _standardise(X)
    np.testing.assert_allclose(lm, np.abs(Xs.T @ (Y - Y.mean(0))).max(0) / X.shape[0],
                               rtol=1e-10)
    for factor, zero in [(1 + 1e-9, True), (1 - 1e-3, False)]:
        lam = lm * factor
        W = np.zeros_like(q)
        W, C, _, conv = prob.solve(q, yv, lam, W, q.copy(), lam, 1e-12, 10000)
        assert conv.all()
        assert (~W.any(axis=0)).all() if zero else W.any(axis=0).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(20, 120), d=st.integers(2, 15), seed=st.integers(0, 10**6),
       fixed=st.booleans(), lam_frac=st.floats(1e-3, 1.0))
def test_property_kkt_random_problems(n, d, seed, fixed, lam_frac):
    X, Y = _problem(n=n, d=d, T=2, seed=seed, fixed=fixed and d >= 4, k=min(2, d))
    st_ = compute_stats(X, Y)[0]
    prob = _Problem(_std_gram(st_), "cd", 4).set_gauge(st_.sigma)
    _, q, yv, *_ = _std_targets(st_, np.arange(2))
    lam = lambda_max(q) * lam_frac
    W, C, _, conv = prob.solve(q, yv, lam, np.zeros_like(q), q.copy(), lambda_max(q), 1e-10,
                               200000)
    assert conv.all()
    Xs, *_ = _standardise(X)
    g = Xs.T @ (Y - Y.mean(0) - Xs @ W) / n
    assert np.all(np.abs(g) <= lam * (1 + 1e-4) + 1e-9)
    act = W != 0
    assert np.all(np.abs(g - lam * np.sign(W))[act] <= 1e-4 * lambda_max(q).max() + 1e-9)


def _brute_holdout(X, Y, lams, n_val):
    """Validation MSE of every λ by a loop with scikit-learn (train-split standardisation)."""
    Xtr, Ytr, Xv, Yv = X[n_val:], Y[n_val:], X[:n_val], Y[:n_val]
    Xs, mu, sd = _standardise(Xtr)
    out = np.zeros(lams.shape)
    for t in range(Y.shape[1]):
        for li, lam in enumerate(lams[t]):
            m = Lasso(alpha=lam, tol=1e-13, max_iter=200000).fit(Xs, Ytr[:, t])
            w = m.coef_ / sd
            b = Ytr[:, t].mean() - mu @ w
            out[t, li] = np.mean((Xv @ w + b - Yv[:, t]) ** 2)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_holdout_selection_matches_brute_force(method):
    X, Y = _problem(seed=4, n=500, d=20, noise=2.0)
    n_val = holdout_size(500, 0.1)
    groups = compute_stats(X, Y, group_bounds_for(500, Split("holdout")))
    res = solve_from_stats(groups, Split("holdout"), PathOptions(n_lambdas=10, tol=1e-12,
                                                                 lambda_ratio=1e-2),
                           method=method)
    brute = _brute_holdout(X, Y, res.lambdas, n_val)
    np.testing.assert_allclose(res.val_mse_path, brute, rtol=1e-7)
    best = select_lambda(brute)
    np.testing.assert_array_equal(res.lam, res.lambdas[np.arange(3), best])
    # refit on all rows at the chosen λ: sklearn on all-rows standardisation
    Xs, mu, sd = _standardise(X)
    for t in range(3):
        m = Lasso(alpha=res.lam[t], tol=1e-14, max_iter=200000).fit(Xs, Y[:, t])
        np.testing.assert_allclose(res.weight[t], m.coef_ / sd, rtol=0,
                                   atol=1e-5 * np.abs(m.coef_ / sd).max())
        np.testing.assert_allclose(X @ res.weight[t] + res.bias[t], m.predict(Xs), atol=1e-5)


def test_cv_selection_matches_brute_force_and_lassocv():
    n, K = 500, 5
    X, Y = _problem(seed=5, n=n, d=20, T=2, noise=3.0)
    groups = compute_stats(X, Y, group_bounds_for(n, Split("cv", folds=K)))
    res = solve_from_stats(groups, Split("cv", folds=K),
                           PathOptions(n_lambdas=12, tol=1e-12, lambda_ratio=1e-2))
    # grid: λ_max of all rows (as LassoCV)
    Xs, mu, sd = _standardise(X)
    lm = np.abs(Xs.T @ (Y - Y.mean(0))).max(0) / n
    np.testing.assert_allclose(res.lambdas[:, 0], lm, rtol=1e-10)
    # brute force with the same convention (each fold standardised on its training part)
    b = fold_bounds(n, K)
    cv = np.zeros(res.lambdas.shape)
    for k in range(K):
        val = np.arange(b[k], b[k + 1])
        tr = np.setdiff1d(np.arange(n), val)
        Xt, mut, sdt = _standardise(X[tr])
        for t in range(2):
            for li, lam in enumerate(res.lambdas[t]):
                m = Lasso(alpha=lam, tol=1e-13, max_iter=200000).fit(Xt, Y[tr, t])
                w = m.coef_ / sdt
                bb = Y[tr, t].mean() - mut @ w
                cv[t, li] += np.mean((X[val] @ w + bb - Y[val, t]) ** 2) / K
    np.testing.assert_allclose(res.val_mse_path, cv, rtol=1e-7)
    # LassoCV on globally standardised X, same grid and contiguous KFold: its folds use the
    # global scaling, so the curves agree closely (not exactly) and pick the same λ here
    for t in range(2):
        m = LassoCV(alphas=res.lambdas[t], cv=KFold(K), tol=1e-12, max_iter=200000).fit(
            Xs, Y[:, t])
        np.testing.assert_allclose(m.mse_path_.mean(1), res.val_mse_path[t], rtol=2e-2)
        assert m.alpha_ == pytest.approx(res.lam[t], rel=1e-12)
        np.testing.assert_allclose(res.weight[t] * sd, m.coef_, atol=1e-5 * np.abs(m.coef_).max())


def test_early_stop_rule_truncates_path():
    X, Y = _problem(seed=6, n=400, d=30, noise=3.0)
    groups = compute_stats(X, Y, group_bounds_for(400, Split("holdout")))
    full = solve_from_stats(groups, Split("holdout"), PathOptions(n_lambdas=30))
    es = solve_from_stats(groups, Split("holdout"), PathOptions(n_lambdas=30, early_stop=True))
    assert np.isnan(es.val_mse_path).any()
    done = ~np.isnan(es.val_mse_path)
    np.testing.assert_allclose(es.val_mse_path[done], full.val_mse_path[done], rtol=1e-6)
    assert (done.sum(1) >= 10).all()


def test_gram_solver_refuses_training_example_targets():
    X, Y = _problem(seed=7)
    from dmdask.fit.solve.base import UnsupportedTargets

    with pytest.raises(UnsupportedTargets, match="training-example"):
        GramSolver().fit(X, Y, target_train_index=np.array([-1, 4, -1]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stack_ratio", [0.0, 1e9])
def test_working_set_routes_match_sklearn_with_kkt_and_gap(method, stack_ratio):
    """Both routes of the per-target working sets — stacked subproblems (every target) and
    the masked GEMM route (every target) — give sklearn's solution, KKT and the gap at every
    path point, on fixed-size masks (null direction) and Bernoulli masks."""
    for fixed in (True, False):
        X, Y = _problem(seed=11, n=300, d=40, T=4, fixed=fixed)
        st = compute_stats(X, Y)[0]
        prob = _Problem(_std_gram(st), method, 8).set_gauge(st.sigma)
        prob.stack_ratio = stack_ratio
        _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
        lams = lambda_grid(lambda_max(q), 10, 1e-3)
        points, record = _recorder()
        tol = 1e-10

        res = gram_path(prob, q, yv, lams, tol=tol, max_iter=100000, val_fn=record)
        assert res["converged"].all()
        Xs, *_ = _standardise(X)
        for li, W in enumerate(points):
            for t in range(Y.shape[1]):
                lam = lams[t, li]
                C = q[:, t] - prob.Q @ W[:, t]
                gap = _gap(yv[t], lam, W[:, t:t + 1], C[:, None], q[:, t:t + 1],
                           np.abs(C).max())[0]
                assert gap <= tol * yv[t] / 2 * (1 + 1e-6) + 1e-15
                assert np.all(np.abs(C) <= lam * (1 + 1e-4) + 1e-12)
                if li % 3 == 0:
                    m = Lasso(alpha=lam, tol=1e-14, max_iter=200000).fit(Xs, Y[:, t])
                    scale = max(np.abs(m.coef_).max(), 1e-12)
                    assert np.abs(W[:, t] - m.coef_).max() <= 1e-4 * scale, (li, t)


def _assert_gap_at_points(prob, q, yv, lams, points, tol, tag):
    """The duality gap of every recorded path point, from a float64 gradient computed from
    scratch, meets the tolerance (1% slack for its own rounding)."""
    for li, W in enumerate(points):
        C = q - prob.Q @ W
        gap = _gap(yv, lams[:, li], W, C, q, np.abs(C).max(axis=0))
        assert np.all(gap <= tol * yv / 2 * 1.01), (tag, li)


def test_fast_mode_float32_kkt_gemm_meets_default_tolerance():
    """With the default tolerance the full gradient is a float32 GEMM; the gap computed in
    float64 from scratch still meets the tolerance at every path point."""
    X, Y = _problem(seed=12, n=2000, d=300, T=6, fixed=True, k=10, noise=2.0)
    st = compute_stats(X, Y)[0]
    for ratio in (0.0, 0.005, 1e9):
        prob = _Problem(_std_gram(st), "fista", 8).set_gauge(st.sigma)
        prob.stack_ratio, prob.fast, prob.kkt_margin = ratio, True, 1e-4
        _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
        lams = lambda_grid(lambda_max(q), 15, 1e-3)
        points, record = _recorder()

        tol = 1e-6
        res = gram_path(prob, q, yv, lams, tol=tol, max_iter=5000, val_fn=record)
        assert res["converged"].all()
        _assert_gap_at_points(prob, q, yv, lams, points, tol, ratio)


def test_predicted_exact_products_save_float32_gemms_and_still_certify():
    """A masked-route column close to its threshold gets its next product in float64, which
    certifies it directly: fewer float32 product columns, and the float64 gap from scratch
    still meets the tolerance at every path point."""
    X, Y = _problem(seed=12, n=2000, d=300, T=6, fixed=True, k=10, noise=2.0)
    st = compute_stats(X, Y)[0]
    _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
    lams = lambda_grid(lambda_max(q), 15, 1e-3)
    tol = 1e-6
    cols = {}
    for predict in (_Problem._PREDICT, -1.0):
        prob = _Problem(_std_gram(st), "fista", 8).set_gauge(st.sigma)
        prob.stack_ratio, prob.fast, prob.kkt_margin = 0.0, True, 1e-4
        prob._PREDICT = predict
        count = {False: 0, True: 0}
        plain = prob.matvec

        def counted(W, exact=False, plain=plain, count=count):
            count[bool(exact)] += W.shape[1]
            return plain(W, exact)

        prob.matvec = counted
        points, record = _recorder()
        res = gram_path(prob, q, yv, lams, tol=tol, max_iter=5000, val_fn=record)
        assert res["converged"].all()
        _assert_gap_at_points(prob, q, yv, lams, points, tol, predict)
        cols[predict] = count
    on, off = cols[_Problem._PREDICT], cols[-1.0]
    assert on[False] < off[False]
    assert on[False] + 2 * on[True] < off[False] + 2 * off[True]  # float64 costs ~2 float32


def test_float32_error_bound_holds_and_sparse_products_agree():
    """The rounding-error bound that certifies stacked targets without a float64 GEMM bounds
    the float32 gradient's actual error off the support (dense and sparse products), and the
    sparse (CSR) product equals the dense one."""
    X, Y = _problem(seed=21, n=3000, d=400, T=4, fixed=True)
    st = compute_stats(X, Y)[0]
    Q, Q32, offmax = _std_gram(st, fast=True)
    prob = _Problem(Q, "fista", 8)
    prob._Q32, prob._offmax, prob.fast = Q32, offmax, True
    off = np.abs(Q - np.diag(np.diag(Q))).max()
    assert off <= offmax <= off * (1 + 1e-6)
    rng = np.random.default_rng(3)
    for k in (1, 5, 40, 300):
        W = np.zeros((400, 30))
        for t in range(30):
            W[rng.choice(400, k, replace=False), t] = rng.standard_normal(k) * 10
        exact = Q @ W
        bound = prob.f32_error_bound(W, np.abs(W).sum(axis=0))
        # the CSR and the GEMM route, forced by the break-even factor (at every density)
        routes = []
        for per_thread in ((1e-9, 1e-9), (1e9, 1e9)):
            prob._CSR_PER_THREAD = per_thread
            routes.append((prob.matvec(W), prob.matvec(W, exact=True)))
        for P32 in (*(r[0] for r in routes), (Q32 @ W.astype(np.float32)).astype(np.float64)):
            err = np.where(W == 0, np.abs(P32 - exact), 0.0).max(axis=0)
            assert np.all(err <= bound), k
        for _, P64 in routes:
            np.testing.assert_allclose(P64, exact, rtol=1e-12, atol=1e-12)


def test_size_chunks_and_padded_rows():
    from dmdask.fit.solve.gram import _padded_rows, _size_chunks

    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 300, size=500)
    chunks = _size_chunks(sizes, max_entries=2**20)
    assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(500))
    for c in chunks:
        assert c.size * max(int(sizes[c].max()), 1) ** 2 <= 2**20 or c.size == 1
    M = rng.random((50, 7)) < 0.2
    M[:, 3] = False
    idx, valid = _padded_rows(M)
    assert idx.shape == (7, max(M.sum(axis=0).max(), 1))
    for t in range(7):
        assert np.array_equal(idx[t][valid[t]], np.flatnonzero(M[:, t]))


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_target_blocks_match_one_block(workers):
    """On the local scheduler the targets are split into one block per thread; the result
    matches one block to the solver tolerance."""
    import dask

    X, Y = _problem(seed=5, n=1500, d=60, T=140, k=4)
    groups = compute_stats(X, Y, group_bounds_for(1500, Split("holdout")))
    one = solve_from_stats(groups, Split("holdout"), PathOptions(tol=1e-8,
                                                                  target_block_size=10**6))
    with dask.config.set(num_workers=workers):
        got = solve_from_stats(groups, Split("holdout"), PathOptions(tol=1e-8))
    assert got.info["blocks"] == (1 if workers == 1 else 2)
    np.testing.assert_allclose(got.val_mse, one.val_mse, rtol=1e-6)
    np.testing.assert_array_equal(got.lam, one.lam)


def _objective(prob, q, lam, W):
    return 0.5 * np.sum(W * (prob.Q @ W), axis=0) - np.sum(q * W, axis=0) + lam * np.abs(W).sum(0)


def test_newton_step_lands_on_the_solution_and_never_ascends():
    """On the solution's support and signs one Newton step from any point of that orthant is
    the LASSO solution; from points with wrong signs it only ever lowers the objective."""
    X, Y = _problem(seed=21, n=150, d=60, T=4, fixed=True, k=8, noise=0.5)
    st = compute_stats(X, Y)[0]
    prob = _Problem(_std_gram(st), "fista", 8).set_gauge(st.sigma)
    _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
    lam = 0.05 * lambda_max(q)
    Xs, *_ = _standardise(X)
    ref = np.stack([Lasso(alpha=lam[t], tol=1e-14, max_iter=10**6).fit(Xs, Y[:, t]).coef_
                    for t in range(Y.shape[1])], axis=1)
    rng = np.random.default_rng(0)
    start = np.abs(ref) * rng.uniform(0.2, 3.0, ref.shape) * np.sign(ref)
    cols, out = newton_step(prob, start, q, lam)
    assert sorted(cols.tolist()) == list(range(Y.shape[1]))
    got = np.zeros_like(start)
    got[:, cols] = out
    np.testing.assert_allclose(got, ref, atol=1e-7 * np.abs(ref).max())
    # wrong signs / extra coordinates: the step may stop short, but never goes uphill
    for seed in range(5):
        r = np.random.default_rng(seed)
        bad = np.where(r.random(ref.shape) < 0.3, r.standard_normal(ref.shape) * 0.3, start)
        cols, out = newton_step(prob, bad, q, lam)
        if cols.size:
            before = _objective(prob, q[:, cols], lam[cols], bad[:, cols])
            after = _objective(prob, q[:, cols], lam[cols], out)
            assert np.all(after < before)


@pytest.mark.parametrize("fast", [False, True])
def test_newton_steps_cut_iterations_with_fewer_models_than_examples(fast):
    """n < d: the masked route with Newton steps on settled supports reaches sklearn's
    solutions, meets the gap at every path point, and needs fewer iterations than without."""
    X, Y = _problem(seed=22, n=90, d=160, T=5, fixed=True, k=10, noise=1.0)
    st = compute_stats(X, Y)[0]
    Xs, *_ = _standardise(X)
    iters = {}
    for every in (0, 3):
        prob = _Problem(_std_gram(st), "fista", 8).set_gauge(st.sigma)
        prob.stack_ratio, prob.newton_every = 0.0, every
        if fast:
            prob.fast, prob.kkt_margin = True, 1e-4
        _, q, yv, *_ = _std_targets(st, np.arange(Y.shape[1]))
        lams = lambda_grid(lambda_max(q), 12, 1e-2)
        points, record = _recorder()

        tol = 1e-6 if fast else 1e-10
        res = gram_path(prob, q, yv, lams, tol=tol, max_iter=100000, val_fn=record)
        assert res["converged"].all()
        iters[every] = int(res["n_iter"].sum())
        for li, W in enumerate(points):
            C = q - prob.Q @ W
            gap = _gap(yv, lams[:, li], W, C, q, np.abs(C).max(axis=0))
            assert np.all(gap <= tol * yv / 2 * 1.01), (every, li)
            if not fast and li % 4 == 3:
                for t in range(Y.shape[1]):
                    m = Lasso(alpha=lams[t, li], tol=1e-14, max_iter=10**6).fit(Xs, Y[:, t])
                    scale = max(np.abs(m.coef_).max(), 1e-12)
                    assert np.abs(W[:, t] - m.coef_).max() <= 1e-4 * scale, (li, t)
    assert iters[3] < iters[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("union", [0.3, 1.0])
def test_validation_quadratic_matches_dense_product(dtype, union):
    """w̃ᵀQ_v w̃ of every column, whichever route it takes (gathers for small supports, one
    GEMM on the support rows or on all rows), equals the plain product."""
    rng = np.random.default_rng(3)
    d, T = 96, 12
    X = (rng.random((400, d)) < 0.5).astype(np.float64)
    Y = rng.standard_normal((400, 2))
    st = compute_stats(X, Y, [0, 400])[0]
    vg = _ValGram(st, st.sigma, fast=dtype == np.float32)
    assert vg.Q.dtype == dtype
    rows = rng.choice(d, int(union * d), replace=False)
    W = np.zeros((d, T))
    for t in range(T):  # supports from 1 to the whole union: both routes
        k = max(1, (t + 1) * rows.size // T)
        W[rng.choice(rows, k, replace=False), t] = rng.standard_normal(k)
    U = np.flatnonzero((W != 0).any(axis=1))
    Q = vg.Q.astype(np.float64)
    want = np.einsum("ij,ij->j", W, Q @ W)
    got = vg.quad(W, U, W[U])
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
