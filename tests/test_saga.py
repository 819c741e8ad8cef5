"""The streaming SAGA solver (dmdask.fit.solve.saga) against scikit-learn, the §1.6 oracle, KKT /
duality-gap checks, paper eq. 9, NaN margins, chunking and worker independence."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import Lasso

from dmdask.fit.solve.base import PathOptions, PathResult, Split
from dmdask.fit.solve.grid import holdout_size
from dmdask.fit.solve.saga import SagaSolver, saga_fit_lambda, saga_path, saga_reference

TIGHT = PathOptions(tol=1e-10, max_iter=2000, extra={"max_epochs": 2000})


# --------------------------------------------------------------------------- helpers


def fixed_masks(rng, n, d, alpha=0.5):
    k = int(round(alpha * d))
    keys = rng.random((n, d))
    idx = np.argpartition(keys, k, axis=1)[:, :k]
    X = np.zeros((n, d), bool)
    np.put_along_axis(X, idx, True, axis=1)
    return X


def problem(seed=0, n=2000, d=60, T=3, k=6, noise=1.0, fixed=True, alpha=0.5):
    rng = np.random.default_rng(seed)
    X = fixed_masks(rng, n, d, alpha) if fixed else rng.random((n, d)) < alpha
    W = np.zeros((d, T))
    for t in range(T):
        W[rng.choice(d, k, replace=False), t] = rng.normal(0, 1, k)
    Y = X @ W + 2.0 + noise * rng.normal(size=(n, T))
    return X, Y


def standardise(X):
    Xf = X.astype(np.float64)
    mu = Xf.mean(0)
    sig = Xf.std(0)
    inv = np.where(sig > 1e-12, 1.0 / np.where(sig > 1e-12, sig, 1.0), 0.0)
    return (Xf - mu) * inv, mu, sig, inv


def sk_lasso(X, y, lam):
    """sklearn on X standardised with *these* rows; returns (w_std, raw w, raw b)."""
    Xs, mu, _, inv = standardise(X)
    m = Lasso(alpha=lam, fit_intercept=True, tol=1e-14, max_iter=1_000_000).fit(Xs, y)
    w = m.coef_ * inv
    return m.coef_, w, m.intercept_ - mu @ w


def lam_max(X, y):
    Xs, *_ = standardise(X)
    return np.abs(Xs.T @ (y - y.mean())).max() / len(y)


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def rows_of(X, Y, t, tti=-1):
    r = np.isfinite(Y[:, t])
    if tti >= 0:
        r &= ~X[:, tti]
    return r


# --------------------------------------------------------------------------- oracle


def test_reference_oracle_reaches_sklearn():
    """§1.6 literally (table at zero, drop_last, fixed lr = 1/(3 L_B)) reaches sklearn (1e-5)."""
    X, Y = problem(seed=1, n=2000, d=50, T=1)
    y = Y[:, 0]
    Xs, *_ = standardise(X)
    lam = 0.1 * lam_max(X, y)
    B = 100
    LB = max(np.linalg.eigvalsh(Xs[i:i + B].T @ Xs[i:i + B] / B).max() for i in (0, 500, 1000))
    w, b = saga_reference(Xs, y, lam, lr=1 / (3 * (LB + 1)), batch_size=B, epochs=300)
    w_sk, *_ = sk_lasso(X, y, lam)
    assert rel(w, w_sk) < 1e-5


# --------------------------------------------------------------------------- one λ


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-size", "bernoulli"])
def test_fixed_lambda_matches_sklearn(fixed):
    X, Y = problem(seed=2, n=2500, d=80, T=3, fixed=fixed)
    lams = np.array([0.3, 0.1, 0.02]) * np.array([lam_max(X, Y[:, t]) for t in range(3)])
    res = saga_fit_lambda(X, Y, lams, options=TIGHT)
    assert isinstance(res, PathResult) and res.solver == "saga"
    assert res.converged.all()
    for t in range(3):
        w_std, w, b = sk_lasso(X, Y[:, t], lams[t])
        assert rel(res.info["w_std"][t], w_std) < 1e-4
        pred_sk = X @ w + b
        pred = X @ res.weight[t] + res.bias[t]
        assert np.abs(pred - pred_sk).max() < 1e-4 * pred_sk.std()


def test_float32_reaches_default_tolerance():
    X, Y = problem(seed=3, n=2000, d=60, T=2)
    lam = 0.1 * lam_max(X, Y[:, 0])
    res = saga_fit_lambda(X, Y, lam, options=PathOptions(extra={"dtype": "float32"}))
    assert res.converged.all() and (res.info["gap_rel"] <= 1e-6).all()
    w_std, *_ = sk_lasso(X, Y[:, 0], lam)
    assert rel(res.info["w_std"][0], w_std) < 1e-3


def test_matches_reference_oracle():
    """The blocked, GEMM, un-standardised-GEMM form solves the same problem as the oracle."""
    X, Y = problem(seed=4, n=2000, d=40, T=1)
    y = Y[:, 0]
    Xs, *_ = standardise(X)
    lam = 0.05 * lam_max(X, y)
    w_ref, b_ref = saga_reference(Xs, y, lam, lr=0.05, batch_size=100, epochs=400)
    res = saga_fit_lambda(X, Y, lam, options=TIGHT)
    assert rel(res.info["w_std"][0], w_ref) < 1e-4
    assert abs(res.info["b_std"][0] - b_ref) < 1e-4 * np.abs(y).max()


def test_lambda_max_is_exact():
    X, Y = problem(seed=5, n=1500, d=50, T=2)
    lm = np.array([lam_max(X, Y[:, t]) for t in range(2)])
    above = saga_fit_lambda(X, Y, lm * (1 + 1e-9))
    assert np.all(above.weight == 0)
    np.testing.assert_allclose(above.bias, Y.mean(0), rtol=1e-12)
    below = saga_fit_lambda(X, Y, lm * 0.97)
    assert all(np.count_nonzero(below.weight[t]) > 0 for t in range(2))
    # the path's first λ is that λ_max (training split, own rows)
    res = saga_path(X, Y, options=PathOptions(n_lambdas=3, lambda_ratio=0.5))
    n_val = holdout_size(len(X), 0.1)
    for t in range(2):
        np.testing.assert_allclose(res.lambdas[t, 0], lam_max(X[n_val:], Y[n_val:, t]),
                                   rtol=1e-10)


# --------------------------------------------------------------------------- path


def _kkt(X, y, w_raw, b_raw, lam):
    """Worst KKT violation / λ and the relative duality gap, in the standardised space."""
    Xs, mu, sig, inv = standardise(X)
    n = len(y)
    w = w_raw * sig
    r = y - X @ w_raw - b_raw
    g = Xs.T @ (r - r.mean()) / n
    act = w != 0
    viol = np.concatenate([np.abs(g[act] - lam * np.sign(w[act])),
                           np.maximum(np.abs(g[~act]) - lam, 0)]) / lam
    yc = y - y.mean()
    rc = r - r.mean()
    P = rc @ rc / (2 * n) + lam * np.abs(w).sum()
    s = max(n * lam, np.abs(Xs.T @ rc).max())
    D = -(n * lam**2 / 2) * (rc @ rc) / s**2 + lam * (rc @ yc) / s
    return viol.max(initial=0.0), (P - D) / (yc @ yc / (2 * n)), abs(r.mean())


def test_kkt_and_gap_at_every_path_point():
    X, Y = problem(seed=6, n=2500, d=60, T=2)
    opts = PathOptions(n_lambdas=8, lambda_ratio=1e-2, tol=1e-8, extra={"keep_path": True})
    res = saga_path(X, Y, options=opts)
    n_val = holdout_size(len(X), 0.1)
    Xtr, Ytr = X[n_val:], Y[n_val:]
    assert res.converged.all()
    for t in range(2):
        for k in range(res.lambdas.shape[1]):
            lam = res.lambdas[t, k]
            viol, gap, rmean = _kkt(Xtr, Ytr[:, t], res.info["path_weight"][t, k],
                                    res.info["path_bias"][t, k], lam)
            assert gap <= 1e-8 * 1.001 + 1e-12, (t, k, gap)
            assert viol < 2e-2, (t, k, viol)
            assert rmean < 1e-8 * np.abs(Ytr[:, t]).max()
    # and at the refit (all rows, chosen λ)
    for t in range(2):
        viol, gap, _ = _kkt(X, Y[:, t], res.weight[t], res.bias[t], res.lam[t])
        assert gap <= 1e-8 * 1.001 + 1e-12 and viol < 2e-2


def test_path_selection_and_refit_match_sklearn():
    """Validation MSE per λ, the chosen λ (ties → smaller) and the refit, against sklearn fits
    on each target's own rows — with NaN margins and an eq. 9 target in the mix."""
    X, Y = problem(seed=7, n=2000, d=40, T=3, noise=1.5)
    rng = np.random.default_rng(0)
    Y[rng.random(Y.shape) < 0.08] = np.nan
    tti = np.array([-1, 5, -1])
    opts = PathOptions(n_lambdas=7, lambda_ratio=1e-2, tol=1e-9)
    res = saga_path(X, Y, options=opts, target_train_index=tti)
    n_val = holdout_size(len(X), 0.1)
    for t in range(3):
        rtr = rows_of(X, Y, t, tti[t])
        rtr[:n_val] = False
        rv = rows_of(X, Y, t, tti[t])
        rv[n_val:] = False
        assert np.isclose(res.lambdas[t, 0], lam_max(X[rtr], Y[rtr, t]), rtol=1e-10)
        val = []
        for lam in res.lambdas[t]:
            _, w, b = sk_lasso(X[rtr], Y[rtr, t], lam)
            val.append(np.mean((X[rv] @ w + b - Y[rv, t]) ** 2))
        val = np.array(val)
        np.testing.assert_allclose(res.val_mse_path[t], val, rtol=1e-4)
        assert res.lam[t] == res.lambdas[t, np.argmin(val)]
        rall = rows_of(X, Y, t, tti[t])
        w_std, w, b = sk_lasso(X[rall], Y[rall, t], res.lam[t])
        assert rel(res.weight[t], w) < 1e-4
        assert res.n_rows[t] == rall.sum()


def test_early_stop_is_fast_l1_rule():
    X, Y = problem(seed=8, n=1500, d=30, T=2, noise=3.0)
    opts = PathOptions(n_lambdas=20, lambda_ratio=1e-3, early_stop=True, min_lams_to_try=5)
    res = saga_path(X, Y, options=opts)
    for t in range(2):
        v = res.val_mse_path[t]
        done = np.nonzero(~np.isnan(v))[0]
        assert done[0] == 0 and np.all(np.diff(done) == 1)
        last = done[-1]
        if last < 19:  # stopped early: the rule held at the last solved λ
            assert last + 1 >= 5 and v[last] > v[last - 1]


def test_fixed_size_gauge_is_l1_minimal():
    """Fixed-size masks: w̃ + τσ has the same residuals; the solution sits at the L1-minimal τ."""
    X, Y = problem(seed=18, n=1500, d=40, T=1)
    lam = 0.002
    res = saga_fit_lambda(X, Y, lam)
    w = res.info["w_std"][0]
    sig = X.std(0)
    l1 = [np.abs(w + t * sig).sum() for t in np.linspace(-1e-3, 1e-3, 41)]
    assert np.argmin(l1) == 20 or np.isclose(min(l1), l1[20], rtol=1e-12)


def test_capped_solves_are_reported_not_converged():
    X, Y = problem(seed=19, n=1500, d=40, T=2)
    res = saga_fit_lambda(X, Y, 0.01, options=PathOptions(tol=1e-12, extra={"max_epochs": 2}))
    assert not res.converged.any()
    assert (res.info["gap_rel"] > 1e-12).all()


# --------------------------------------------------------------------------- per-target rows


def test_training_example_target_uses_models_without_it():
    """Paper eq. 9: exactly the models whose mask excludes t, w_t = 0, n_t = #{i: t ∉ S_i}."""
    X, Y = problem(seed=9, n=2400, d=50, T=3)
    # make target 1 depend strongly on its own training example
    Y[:, 1] += 3.0 * X[:, 7]
    tti = np.array([-1, 7, 20])
    lam = 0.05
    res = saga_fit_lambda(X, Y, lam, target_train_index=tti, options=TIGHT)
    for t in (1, 2):
        rows = ~X[:, tti[t]]
        assert res.n_rows[t] == rows.sum()
        assert res.weight[t, tti[t]] == 0.0
        _, w, b = sk_lasso(X[rows], Y[rows, t], lam)
        assert rel(res.weight[t], w) < 1e-4
        assert abs(res.bias[t] - b) < 1e-4 * np.abs(Y[:, t]).max()
    # the same as a solve on those rows alone
    rows = ~X[:, 7]
    alone = saga_fit_lambda(X[rows], Y[rows][:, [1]], lam, options=TIGHT)
    assert rel(res.weight[1], alone.weight[0]) < 1e-5
    assert res.n_rows[0] == len(X)


def test_nan_margins_are_skipped_exactly():
    X, Y = problem(seed=10, n=2000, d=40, T=2)
    rng = np.random.default_rng(1)
    Y[rng.random(2000) < 0.2, 0] = np.nan
    lam = 0.05
    res = saga_fit_lambda(X, Y, lam, options=TIGHT)
    keep = np.isfinite(Y[:, 0])
    alone = saga_fit_lambda(X[keep], Y[keep][:, [0]], lam, options=TIGHT)
    assert res.n_rows[0] == keep.sum() and res.n_rows[1] == 2000
    assert rel(res.weight[0], alone.weight[0]) < 1e-5
    assert abs(res.bias[0] - alone.bias[0]) < 1e-5 * np.abs(Y[keep, 0]).max()
    # the other target is unaffected by target 0's NaNs
    other = saga_fit_lambda(X, Y[:, [1]], lam, options=TIGHT)
    assert rel(res.weight[1], other.weight[0]) < 1e-5


def test_all_nan_and_constant_targets():
    X, Y = problem(seed=11, n=800, d=20, T=3)
    Y[:, 1] = np.nan
    Y[:, 2] = 4.0
    res = saga_path(X, Y, options=PathOptions(n_lambdas=4))
    assert res.n_rows[1] == 0 and not res.converged[1] and np.all(res.weight[1] == 0)
    assert np.all(res.weight[2] == 0) and np.isclose(res.bias[2], 4.0)
    assert res.converged[0] and res.converged[2]


# --------------------------------------------------------------------------- independence


def test_independent_of_storage_chunking():
    """Storage chunks never change the visiting order: results are bitwise identical."""
    X, Y = problem(seed=12, n=1500, d=30, T=2)
    opts = PathOptions(n_lambdas=5, lambda_ratio=1e-2, row_block_size=512)
    ref = saga_path(X, Y, options=opts)
    for c in (100, 700):
        res = saga_path(da.from_array(X, chunks=(c, 30)), da.from_array(Y, chunks=(c, 1)),
                        options=opts)
        np.testing.assert_array_equal(res.weight, ref.weight)
        np.testing.assert_array_equal(res.val_mse_path, ref.val_mse_path)


def test_independent_of_row_block_size():
    """Another row-block size changes the minibatch order, not the (certified) solution."""
    X, Y = problem(seed=13, n=2000, d=30, T=2)
    opts = dict(n_lambdas=5, lambda_ratio=1e-2, tol=1e-10)
    a = saga_path(X, Y, options=PathOptions(row_block_size=300, **opts))
    b = saga_path(X, Y, options=PathOptions(row_block_size=2000, **opts))
    np.testing.assert_allclose(a.lam, b.lam, rtol=1e-12)  # same grid index chosen
    assert rel(a.weight, b.weight) < 1e-4
    np.testing.assert_allclose(a.val_mse_path, b.val_mse_path, rtol=1e-6)


@pytest.mark.cluster
@pytest.mark.slow
def test_independent_of_number_of_workers():
    from distributed import Client, LocalCluster

    X, Y = problem(seed=14, n=1200, d=30, T=2)
    Xd = da.from_array(X, chunks=(100, 30))
    Yd = da.from_array(Y, chunks=(100, 2))
    opts = PathOptions(n_lambdas=3, lambda_ratio=0.1, tol=1e-4, row_block_size=500)
    with dask.config.set(scheduler="sync"):
        ref = saga_path(Xd, Yd, options=opts)
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cl, Client(cl):
            res = saga_path(Xd, Yd, options=opts)
        np.testing.assert_array_equal(res.weight, ref.weight)
        np.testing.assert_array_equal(res.bias, ref.bias)


@pytest.mark.cluster
def test_row_blocks_run_on_the_cluster():
    """With a client, the row-block tasks of every pass run on its workers (two target blocks
    side by side), and the result is the local run's, bit for bit (one statistics lane, so
    the statistics are summed in the same order)."""
    from distributed import Client, LocalCluster, get_task_stream

    X, Y = problem(seed=20, n=800, d=20, T=4)
    rng = np.random.default_rng(2)
    Y[rng.random(Y.shape) < 0.05] = np.nan
    tti = np.array([-1, 3, -1, 7])
    Xd, Yd = da.from_array(X, chunks=(200, 20)), da.from_array(Y, chunks=(200, 4))
    opts = PathOptions(n_lambdas=3, lambda_ratio=0.1, tol=1e-4, row_block_size=300,
                       target_block_size=2)
    split = Split(val_fraction=0.2)
    with dask.config.set({"dmdask.solve.stats-lanes": 1}):
        ref = SagaSolver().fit(Xd, Yd, split=split, options=opts, target_train_index=tti)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cl, Client(cl) as client, \
                get_task_stream(client) as ts:
            res = SagaSolver().fit(Xd, Yd, split=split, options=opts, target_train_index=tti,
                                   client=client)
            workers = set(client.scheduler_info()["workers"])
    ran = [t["worker"] for t in ts.data if str(t["key"]).startswith("('_pass_task")
           or "_pass_task" in str(t["key"])]
    assert len(ran) > 10 and set(ran) <= workers
    for name in ("weight", "bias", "lam", "val_mse_path", "n_rows"):
        np.testing.assert_array_equal(getattr(res, name), getattr(ref, name), err_msg=name)


def test_target_blocks_do_not_change_results():
    X, Y = problem(seed=15, n=1000, d=20, T=5)
    opts = dict(n_lambdas=4, lambda_ratio=1e-2, tol=1e-10)
    one = saga_path(X, Y, options=PathOptions(**opts))
    two = saga_path(X, Y, options=PathOptions(target_block_size=2, **opts))
    assert rel(one.weight, two.weight) < 1e-4
    np.testing.assert_allclose(one.lam, two.lam, rtol=1e-12)


def test_solver_class_and_refusals():
    X, Y = problem(seed=16, n=600, d=20, T=1)
    s = SagaSolver(batch_size=64)
    assert s.per_target_rows and s.selections == ("holdout",)
    res = s.fit(X, Y, split=Split(), options=PathOptions(n_lambdas=3))
    assert res.info["batch_size"] == 64
    with pytest.raises(Exception, match="holdout"):
        s.fit(X, Y, split=Split(kind="cv"), options=PathOptions())
    with pytest.raises(Exception, match="unknown SAGA options"):
        saga_path(X, Y, options=PathOptions(extra={"bogus": 1}))


def test_reads_a_run_store(tmp_path):
    """Masks and margins straight from a Zarr run store (dask-backed) give the NumPy result."""
    import dmdask
    from dmdask.store.runstore import create_jobless_store, write_block

    path = tmp_path / "run.zarr"
    create_jobless_store(path, 30, 2, block_size=128, seed=0)
    dmdask.add_models(path, "random", n=700, alpha=0.5)
    ds = dmdask.open_store(path)
    X = ds.mask.values
    rng = np.random.default_rng(0)
    Y = (X[:, :5] @ rng.normal(size=(5, 2)) + rng.normal(size=(700, 2))).astype(np.float32)
    for blk in range(int(np.ceil(700 / 128))):
        write_block(path, blk, Y[blk * 128:(blk + 1) * 128])
    ds = dmdask.open_store(path)
    opts = PathOptions(n_lambdas=4, lambda_ratio=1e-2)
    a = saga_path(ds.mask.data, ds.margin.data, options=opts)
    b = saga_path(X, Y.astype(np.float64), options=opts)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.info["bytes_read"] > 0


@pytest.mark.gpu
def test_cupy_backend_matches_numpy():
    X, Y = problem(seed=17, n=1500, d=40, T=2)
    lam = 0.05
    ref = saga_fit_lambda(X, Y, lam, options=TIGHT)
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        res = saga_fit_lambda(da.from_array(X, chunks=(500, 40)), Y, lam, options=TIGHT)
    assert rel(res.weight, ref.weight) < 1e-5
