"""The one contract suite every registered LASSO-path solver passes (dmdask.fit.solve.base).

A solver joins by registering in ``dmdask/fit/solve/__init__.py``; every test here is run for it
(parametrized over the registry itself: a registered solver that fails to import errors here,
it does not drop out).
"""

import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import Lasso

from dmdask.errors import DmdaskError
from dmdask.fit.solve import (
    PathOptions,
    Split,
    UnsupportedTargets,
    available_solvers,
    get_solver,
    register_solver,
    registered_solvers,
)
from dmdask.fit.solve.grid import holdout_size

SOLVERS = registered_solvers()
OPTS = PathOptions(n_lambdas=8, lambda_ratio=1e-2, tol=1e-10, max_iter=100000)


def _problem(n=400, d=12, T=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d)) < 0.5
    W = np.zeros((d, T))
    W[:4] = rng.standard_normal((4, T))
    Y = (X @ W + rng.standard_normal((n, T)) + 1.5).astype(np.float32)
    return X, Y


def _std(X):
    Xf = X.astype(np.float64)
    mu, sd = Xf.mean(0), Xf.std(0)
    return (Xf - mu) / sd, mu, sd


@pytest.fixture(scope="module", params=SOLVERS)
def solved(request):
    X, Y = _problem()
    solver = get_solver(request.param)
    res = solver.fit(X, Y, split=Split("holdout"), options=OPTS)
    return request.param, solver, X, Y, res


def test_registry_has_gram():
    assert {"gram", "saga"} <= set(SOLVERS)
    assert available_solvers() == SOLVERS  # every registered solver imports


@pytest.mark.parametrize("source,why", [
    (None, "ModuleNotFoundError"),  # the registered module is not there (renamed, deleted)
    ("raise ImportError('needs libfoo')", "needs libfoo"),
    ("import dmdask_no_such_dependency_xyz", "dmdask_no_such_dependency_xyz"),
])
def test_a_registered_solver_that_fails_to_import_fails_loudly(tmp_path, monkeypatch, source,
                                                               why):
    from dmdask.fit.solve import _REGISTRY

    mod = f"dmdask_broken_solver_{abs(hash(why))}"
    if source is not None:
        (tmp_path / f"{mod}.py").write_text(source + "\nclass Broken:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_REGISTRY, "broken", f"{mod}:Broken")
    assert "broken" in registered_solvers()  # the contract suite would run it
    for call in (lambda: get_solver("broken"), available_solvers):
        with pytest.raises(DmdaskError, match=f"'broken'.*{why}"):
            call()
    register_solver("broken", "dmdask.fit.solve.gram:NoSuchSolver")
    with pytest.raises(DmdaskError, match="'broken'.*NoSuchSolver"):
        available_solvers()


def test_result_shapes_and_path_structure(solved):
    name, solver, X, Y, res = solved
    T, d = Y.shape[1], X.shape[1]
    assert res.weight.shape == (T, d) and res.bias.shape == (T,)
    assert res.lambdas.shape == (T, OPTS.n_lambdas) == res.val_mse_path.shape
    assert np.all(np.diff(res.lambdas, axis=1) < 0)  # descending grid
    n_val = holdout_size(X.shape[0], 0.1)
    Xs, _, _ = _std(X[n_val:])
    Yc = Y[n_val:].astype(np.float64) - Y[n_val:].mean(0)
    lam_max = np.abs(Xs.T @ Yc).max(0) / (X.shape[0] - n_val)
    np.testing.assert_allclose(res.lambdas[:, 0], lam_max, rtol=1e-6)
    np.testing.assert_allclose(res.lambdas[:, -1], lam_max * OPTS.lambda_ratio, rtol=1e-6)
    idx = [int(np.flatnonzero(res.lambdas[t] == res.lam[t])[0]) for t in range(T)]
    np.testing.assert_array_equal(res.val_mse, res.val_mse_path[np.arange(T), idx])
    assert np.all(res.val_mse <= np.nanmin(res.val_mse_path, axis=1))
    assert res.converged.all()
    np.testing.assert_array_equal(res.n_rows, X.shape[0])


def test_matches_sklearn_at_chosen_lambda(solved):
    name, solver, X, Y, res = solved
    Xs, mu, sd = _std(X)
    for t in range(Y.shape[1]):
        m = Lasso(alpha=res.lam[t], tol=1e-14, max_iter=200000).fit(Xs, Y[:, t])
        w = m.coef_ / sd
        assert np.abs(res.weight[t] - w).max() <= 1e-4 * np.abs(w).max(), name
        # raw-space conversion: mask @ weight + bias reproduces the standardised model
        np.testing.assert_allclose(X @ res.weight[t] + res.bias[t], m.predict(Xs),
                                   atol=1e-4 * np.abs(Y[:, t]).max())


def test_kkt_at_refit(solved):
    name, solver, X, Y, res = solved
    Xs, mu, sd = _std(X)
    n = X.shape[0]
    for t in range(Y.shape[1]):
        w = res.weight[t] * sd
        r = Y[:, t] - Y[:, t].mean() - Xs @ w
        g = Xs.T @ r / n
        lam = res.lam[t]
        act = w != 0
        assert np.all(np.abs(g[~act]) <= lam * (1 + 1e-4))
        assert np.all(np.abs(g[act] - lam * np.sign(w[act])) <= 1e-4 * res.lambdas[t, 0])


def test_independent_of_chunking_and_target_block_size(solved):
    name, solver, X, Y, res = solved
    opts = PathOptions(**{**OPTS.__dict__, "target_block_size": 1, "row_block_size": 100})
    res2 = solver.fit(da.from_array(X, chunks=(53, 5)), da.from_array(Y, chunks=(41, 2)),
                      split=Split("holdout"), options=opts)
    np.testing.assert_allclose(res2.lambdas, res.lambdas, rtol=1e-9)
    np.testing.assert_allclose(res2.val_mse_path, res.val_mse_path, rtol=1e-6)
    np.testing.assert_array_equal(res2.lam, res.lam)
    np.testing.assert_allclose(res2.weight, res.weight, atol=1e-6 * np.abs(res.weight).max())


def test_nan_rows_skipped_exactly(solved):
    name, solver, X, Y, res = solved
    Y = Y.copy()
    drop = np.array([100, 250, 399])  # training rows; the holdout size stays 40
    Y[drop, 0] = np.nan
    if not solver.per_target_rows:
        with pytest.raises(UnsupportedTargets):
            solver.fit(X, Y, split=Split("holdout"), options=OPTS)
        return
    keep = np.setdiff1d(np.arange(X.shape[0]), drop)
    assert holdout_size(keep.size, 0.1) == holdout_size(X.shape[0], 0.1)
    got = solver.fit(X, Y, split=Split("holdout"), options=OPTS)
    ref = solver.fit(X[keep], Y[keep], split=Split("holdout"), options=OPTS)
    assert got.n_rows[0] == keep.size and got.n_rows[1] == X.shape[0]
    np.testing.assert_allclose(got.weight[0], ref.weight[0], atol=1e-4 * np.abs(ref.weight).max())
    np.testing.assert_allclose(got.lam[0], ref.lam[0], rtol=1e-6)


def test_training_example_target_uses_excluding_models(solved):
    name, solver, X, Y, res = solved
    tti = np.array([2, -1, -1])
    if not solver.per_target_rows:
        with pytest.raises(UnsupportedTargets):
            solver.fit(X, Y, split=Split("holdout"), options=OPTS, target_train_index=tti)
        return
    got = solver.fit(X, Y, split=Split("holdout"), options=OPTS, target_train_index=tti)
    assert got.weight[0, 2] == 0
    assert got.n_rows[0] == int((~X[:, 2]).sum())
