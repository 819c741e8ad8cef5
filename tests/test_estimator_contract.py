"""The contract every registered estimator meets (parametrised over
``dmdask.analysis.estimators.ESTIMATORS``): schema of the output, sign convention, invariance to the
store's model-block chunking, NaN margins, paper eq. 9 — each checked against an independent
NumPy reference of the estimator on the rows it should use.

Store-based estimators run on jobless planted stores; the model-based ones
(``estimators.MODEL_BASED``) train models of a job, so they meet the parts of the contract
that apply (schema, target subsets, sign, errors) on a small DigitsMLP store; their
references are in ``tests/test_model_estimators.py``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from test_evaluate import make_store, set_margins_nan

import dmdask
from dmdask import config
from dmdask.analysis import estimators
from dmdask.analysis.metrics import correctness
from dmdask.errors import InputError, JobError

NAMES = sorted(n for n in estimators.ESTIMATORS if n not in estimators.MODEL_BASED)
MODEL_NAMES = sorted(estimators.MODEL_BASED)
# small settings keep the model-based contract cheap (a 64-16-10 MLP, 2 epochs)
MODEL_OPTS = {"trak": {"n_models": 2, "proj_dim": 64}, "shapley": {"n_models": 200}}
# the job a model-based estimator's contract runs on where the MLP is not one it takes
MODEL_JOBS = {"loo_exact": "jobs.digits:DigitsRidge", "loo_retrain": "jobs.digits:DigitsRidge",
              "loo_newton": "jobs.digits:DigitsLogistic", "shapley": "jobs.digits:DigitsRidge"}


class ScaledRidge(RegressorMixin, BaseEstimator):
    """scikit-learn ridge in dmdask's parametrisation: (X_cᵀX_c + nλI)w = X_cᵀy_c, i.e.
    ``Ridge(alpha=n·λ)`` on the n rows it is fitted on (fold-dependent alpha)."""

    def __init__(self, lam=1.0):
        self.lam = lam

    def fit(self, X, y):
        from sklearn.linear_model import Ridge

        self.r_ = Ridge(alpha=self.lam * len(X)).fit(X, y)
        return self

    def predict(self, X):
        return self.r_.predict(X)


def kfold_ids(n):
    """Fold of each of n fitting rows: scikit-learn's KFold (contiguous, no shuffle) with
    ridge's number of folds."""
    from sklearn.model_selection import KFold

    K = min(int(config.get("estimators.ridge-folds")), n)
    fold = np.empty(n, np.int64)
    for k, (_, te) in enumerate(KFold(K).split(np.zeros(n))):
        fold[te] = k
    return fold


def sk_ridge_cv(X, y, fold):
    """scikit-learn GridSearchCV of ridge over dmdask's documented grid (``ridge-lambdas``
    values log-spaced over ``ridge-lambda-range`` × the mean column variance of X) on the
    given folds, then the refit on all rows: (w, b, chosen λ, CV MSE path)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    lo, hi = config.get("estimators.ridge-lambda-range")
    grid = X.var(0).mean() * np.logspace(np.log10(hi), np.log10(lo),
                                         int(config.get("estimators.ridge-lambdas")))
    gs = GridSearchCV(ScaledRidge(), {"lam": list(grid)}, cv=PredefinedSplit(fold),
                      scoring="neg_mean_squared_error", refit=False).fit(X, y)
    path = -gs.cv_results_["mean_test_score"]
    lam = grid[int(np.argmin(path))]
    r = Ridge(alpha=lam * len(X)).fit(X, y)
    return r.coef_, r.intercept_, lam, path


def reference(name, X, y, fold=None):
    """Independent NumPy/scikit-learn estimate for one target from rows X [n, d] (0/1), y [n];
    ``fold``: the CV fold of each row (ridge; default KFold over these rows)."""
    X = X.astype(np.float64)
    est = estimators.ESTIMATORS[name]
    if est.output == "correctness":
        y = (y > 0).astype(np.float64)
    if name.startswith("dom_"):
        inn, out = X.astype(bool), ~X.astype(bool)
        w = np.array([y[inn[:, j]].mean() - y[out[:, j]].mean() if inn[:, j].any() and
                      out[:, j].any() else np.nan for j in range(X.shape[1])])
        mbar = X.mean(0)
        return w, y.mean() - np.nansum(np.where(mbar > 0, w * mbar, 0.0))
    Xc, yc = X - X.mean(0), y - y.mean()
    if name == "ols":
        w = np.linalg.lstsq(Xc, yc, rcond=1e-10)[0]  # min-norm
    elif name == "ridge":
        return sk_ridge_cv(X, y, kfold_ids(len(y)) if fold is None else fold)[:2]
    else:
        raise AssertionError(f"no reference for {name}")
    return w, y.mean() - X.mean(0) @ w


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Targets whose margin rises with train 0 and falls with train 1 (and weak others)."""
    rng = np.random.default_rng(5)
    N, T = 12, 4
    W = 0.1 * rng.normal(size=(T, N))
    W[:, 0], W[:, 1] = 1.5, -1.5
    paths = {}
    for block in (16, 1000):
        p = tmp_path_factory.mktemp("c") / f"b{block}.zarr"
        make_store(p, N=N, T=T, n_fit=600, n_held=10, R=1, block=block, W=W,
                   b=np.zeros(T), noise=0.5)
        paths[block] = str(p)
    return paths, W


@pytest.mark.parametrize("name", NAMES)
def test_schema(name, planted):
    paths, W = planted
    ds = dmdask.open_store(paths[16])
    est = estimators.ESTIMATORS[name]
    sc = estimators.compute(ds, name)
    assert sc.name == "score" and sc.dims == ("target", "train")
    assert sc.shape == (ds.sizes["target"], ds.sizes["train"]) and sc.dtype == np.float64
    np.testing.assert_array_equal(sc["target"], ds["target"])
    np.testing.assert_array_equal(sc["train"], ds["train"])
    assert sc.attrs["estimator"] == name and sc.attrs["output"] == est.output
    assert ("bias" in sc.coords) == est.has_bias
    assert sc.attrs["n_models"] == 600 and np.isfinite(sc.values).all()
    # a path works as well as a Dataset, and a target subset keeps its coordinates
    sub = estimators.compute(paths[16], name, targets=[2, 0])
    np.testing.assert_array_equal(sub["target"], [2, 0])
    np.testing.assert_allclose(sub.values, sc.values[[2, 0]], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_and_sign(name, planted):
    paths, W = planted
    ds = dmdask.open_store(paths[16])
    sc = estimators.compute(ds, name)
    rows = np.flatnonzero(ds["kind"].values == "random")
    X, Y = ds["mask"].values[rows], ds["margin"].values[rows].astype(np.float64)
    for t in range(W.shape[0]):
        w, b = reference(name, X, Y[:, t])
        if name == "ols":  # fixed-size subsets: compare modulo the unidentifiable 1 direction
            w = w - w.mean()
        np.testing.assert_allclose(sc.values[t], w, rtol=1e-7, atol=1e-9)
        if "bias" in sc.coords:
            assert sc["bias"].values[t] == pytest.approx(b, rel=1e-7, abs=1e-9)
    assert (sc.values[:, 0] > 0).all() and (sc.values[:, 1] < 0).all()  # τ > 0: raises output


@pytest.mark.parametrize("name", NAMES)
def test_chunking_invariance(name, planted):
    paths, _ = planted
    a = estimators.compute(dmdask.open_store(paths[16]), name)
    b = estimators.compute(dmdask.open_store(paths[1000]), name)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9, atol=1e-12)
    if "bias" in a.coords:
        np.testing.assert_allclose(a["bias"], b["bias"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_nan_margins(name, tmp_path):
    p = tmp_path / "nan.zarr"
    make_store(p, N=8, T=3, n_fit=200, n_held=5, R=1, noise=0.5)
    ds = dmdask.open_store(p)
    rows = np.flatnonzero(ds["kind"].values == "random")
    drop = rows[::7]
    set_margins_nan(p, drop, 1)
    ds = dmdask.open_store(p)
    sc = estimators.compute(ds, name)
    assert sc.attrs["n_nan_targets"] == 1
    X, Y = ds["mask"].values[rows], ds["margin"].values[rows].astype(np.float64)
    keep = ~np.isnan(Y[:, 1])
    assert keep.sum() == rows.size - drop.size
    # rows drop out of the folds they are in: the folds stay those of all fitting rows
    w, b = reference(name, X[keep], Y[keep, 1], fold=kfold_ids(rows.size)[keep])
    if name == "ols":
        w = w - w.mean()
    np.testing.assert_allclose(sc.values[1], w, rtol=1e-7, atol=1e-9)
    # the other targets are untouched by target 1's missing rows
    w0, _ = reference(name, X, Y[:, 0])
    np.testing.assert_allclose(sc.values[0], w0 - (w0.mean() if name == "ols" else 0),
                               rtol=1e-7, atol=1e-9)
    if name.endswith("correctness"):  # NaN margins are missing, not "wrong"
        assert np.isnan(correctness(np.array([np.nan])))[0]


@pytest.mark.parametrize("name", NAMES)
def test_eq9_training_targets(name, tmp_path):
    if not estimators.ESTIMATORS[name].eq9:
        pytest.skip(f"{name} does not support eq. 9")
    p = tmp_path / "eq9.zarr"
    tti = np.array([2, -1, 5])
    make_store(p, N=8, T=3, n_fit=300, n_held=5, R=1, tti=tti, noise=0.5, sampling="bernoulli")
    ds = dmdask.open_store(p)
    sc = estimators.compute(ds, name)
    rows = np.flatnonzero(ds["kind"].values == "random")
    X, Y = ds["mask"].values[rows], ds["margin"].values[rows].astype(np.float64)
    for t, j in enumerate(tti):
        use = np.ones(rows.size, bool) if j < 0 else ~X[:, j]
        w, b = reference(name, X[use], Y[use, t], fold=kfold_ids(rows.size)[use])
        np.testing.assert_allclose(sc.values[t], w, rtol=1e-7, atol=1e-9, equal_nan=True)
        if j >= 0:
            own = sc.values[t, j]
            assert np.isnan(own) if name.startswith("dom_") else own == 0.0
    off = estimators.compute(ds, name, eq9=False)
    w, _ = reference(name, X, Y[:, 0])
    np.testing.assert_allclose(off.values[0], w, rtol=1e-7, atol=1e-9)


def test_registry_errors(planted):
    paths, _ = planted
    with pytest.raises(InputError, match="unknown estimator"):
        estimators.compute(paths[16], "nope")
    with pytest.raises(InputError):
        estimators.register(estimators.ESTIMATORS["ols"])
    with pytest.raises(InputError, match="lam"):
        estimators.compute(paths[16], "ridge", lam=0.0)


def test_ridge_cv_matches_sklearn_grid_search(planted, tmp_path):
    """Ridge's λ is chosen by CV as LASSO's is: its CV MSE path and chosen λ equal
    scikit-learn's GridSearchCV on the same contiguous folds (KFold), and ``lam=`` still fixes
    it. A store where the signal is weak against the noise needs a larger λ than one where
    it is strong (the choice follows the data)."""
    from dmdask.analysis.estimators.store import (
        ridge_cv_from_folds,
        ridge_lambda_grid,
        store_statistics,
    )

    paths, W = planted
    ds = dmdask.open_store(paths[16])
    rows = np.flatnonzero(ds["kind"].values == "random")
    X, Y = ds["mask"].values[rows].astype(np.float64), ds["margin"].values[rows]
    st = store_statistics(ds, own_gram=True, folds=5)
    parts = [(f.n, f.G, f.s, f.C, f.sy, f.syy) for f in st.shared_folds]
    grid = ridge_lambda_grid(st.shared.n, st.shared.G, st.shared.s)
    path = ridge_cv_from_folds(parts, grid)
    sc = estimators.compute(ds, "ridge")
    for t in range(W.shape[0]):
        _, _, lam, sk_path = sk_ridge_cv(X, Y[:, t].astype(np.float64), kfold_ids(rows.size))
        np.testing.assert_allclose(path[t], sk_path, rtol=1e-9)
        assert sc["ridge_lambda"].values[t] == pytest.approx(lam, rel=1e-12)
    fixed = estimators.compute(ds, "ridge", lam=0.01)
    np.testing.assert_array_equal(fixed["ridge_lambda"].values, 0.01)
    lams = {}
    for noise in (0.1, 3.0):
        p = tmp_path / f"n{noise}.zarr"
        make_store(p, N=12, T=3, n_fit=300, n_held=5, R=1, W=0.3 * W[:3], b=np.zeros(3),
                   noise=noise)
        lams[noise] = estimators.compute(p, "ridge")["ridge_lambda"].values
    assert (lams[3.0] > lams[0.1]).all()


def test_shared_statistics_reused(planted):
    """One statistics pass serves several estimators of the same output."""
    paths, _ = planted
    ds = dmdask.open_store(paths[16])
    st = estimators.store_statistics(ds, output="margin", own_gram=True, folds=5)
    for name in ("dom_margin", "ols", "ridge"):
        a = estimators.compute(ds, name, stats=st)
        b = estimators.compute(ds, name)
        np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(InputError, match="output"):
        estimators.compute(ds, "dom_correctness", stats=st)


# ------------------------------------------------------------------ model-based estimators
@pytest.fixture(scope="module")
def mlp_store(tmp_path_factory):
    pytest.importorskip("torch")
    p = tmp_path_factory.mktemp("mc") / "mlp.zarr"
    dmdask.create_store(p, "jobs.digits:DigitsMLP", 0, 0.5, params={"hidden": 16, "epochs": 2})
    return str(p)


@pytest.fixture(scope="module")
def job_store(tmp_path_factory, mlp_store):
    """The store (path) estimator ``name``'s contract runs on, made once per job."""
    made = {}

    def get(name):
        job = MODEL_JOBS.get(name)
        if job is None:
            return mlp_store
        if job not in made:
            p = tmp_path_factory.mktemp("jc") / (job.split(":")[1] + ".zarr")
            dmdask.create_store(p, job, 0, 0.5)
            made[job] = str(p)
        return made[job]

    return get


@pytest.mark.torch
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_schema_and_sign(name, job_store):
    """Schema as for the store estimators (no bias: calibrated by evaluate), a target subset
    keeps its coordinates and values, and the sign convention: on the digits, training
    examples of the target's own class score higher on average than the others."""
    if name == "trak":
        pytest.importorskip("trak")  # the `model` extra
    store = job_store(name)
    ds = dmdask.open_store(store)
    est = estimators.ESTIMATORS[name]
    opts = MODEL_OPTS.get(name, {})
    tg = np.arange(0, 500, 10)
    sc = estimators.compute(ds, name, targets=tg, **opts)
    assert sc.name == "score" and sc.dims == ("target", "train") and sc.dtype == np.float64
    assert sc.shape == (tg.size, ds.sizes["train"]) and np.isfinite(sc.values).all()
    np.testing.assert_array_equal(sc["target"], tg)
    np.testing.assert_array_equal(sc["train"], ds["train"])
    np.testing.assert_array_equal(sc["target_label"], ds["target_label"].values[tg])
    assert sc.attrs["estimator"] == name and sc.attrs["output"] == est.output == "margin"
    assert "bias" not in sc.coords and not est.has_bias and not est.eq9
    assert sc.attrs["n_models"] == opts.get("n_models", 1 if name != "trak" else 10)
    sub = estimators.compute(store, name, targets=tg[[3, 0]], **opts)
    np.testing.assert_array_equal(sub["target"], tg[[3, 0]])
    np.testing.assert_allclose(sub.values, sc.values[[3, 0]], rtol=1e-5,
                               atol=1e-6 * np.abs(sc.values).max())
    same = ds["target_label"].values[tg][:, None] == ds["train_label"].values[None, :]
    v = sc.values
    assert v[same].mean() > v[~same].mean()


@pytest.mark.torch
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_errors(name, planted, mlp_store):
    paths, _ = planted
    with pytest.raises(JobError, match="no job"):  # a jobless store has nothing to train
        estimators.compute(paths[16], name)
    with pytest.raises(InputError, match="targets"):
        estimators.compute(mlp_store, name, targets=[10_000])
    with pytest.raises(InputError, match="n_models"):
        estimators.compute(mlp_store, name, n_models=0)
