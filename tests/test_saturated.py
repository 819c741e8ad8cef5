"""A saturated learner's store through the default fit (issue 15, item 8).

The store holds real margins of a distance-weighted 5-NN on digits (``jobs.knn``): most are
exactly 1.0, many targets are constant, the others take few distinct values (tied outputs,
often one or two models off the constant)."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import Lasso

import dmdask
from dmdask.fit.solve import gram
from dmdask.fit.solve.base import BudgetWarning
from dmdask.fit.solve.grid import lambda_grid
from dmdask.fit.stats import compute_stats
from dmdask.store.runstore import create_jobless_store, read_meta, write_block
from jobs.knn import DigitsKNN

N_MODELS = 800


@pytest.fixture(scope="module")
def knn_store(tmp_path_factory):
    job = DigitsKNN(n_train=400, n_target=60)
    desc = job.describe()
    path = str(tmp_path_factory.mktemp("sat") / "knn.zarr")
    create_jobless_store(path, job.n_train, job.n_target, block_size=200, seed=3,
                         train_label=desc["train_label"], target_label=desc["target_label"])
    dmdask.add_models(path, "random", n=N_MODELS, alpha=0.5)
    ds = dmdask.open_store(path)
    B = int(read_meta(path)["block_size"])
    for k in range(-(-N_MODELS // B)):
        masks = ds["mask"].values[k * B:(k + 1) * B]
        write_block(path, k, job.train_block(masks, np.zeros(masks.shape[0], np.int64)))
    return path


@pytest.fixture(scope="module")
def default_fit(knn_store):
    """The default fit, shared by the tests that assert on it; on this store it must finish
    within its budget (a BudgetWarning is an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        return dmdask.fit_datamodels(knn_store)


def _arrays(path):
    ds = dmdask.open_store(path)
    return ds["mask"].values.astype(np.float64), ds["margin"].values.astype(np.float64)


def test_store_is_saturated(knn_store):
    # what makes the store hard, so that the tests below test it
    _, Y = _arrays(knn_store)
    const = np.ptp(Y, axis=0) == 0
    distinct = np.array([np.unique(y).size for y in Y.T])
    assert (Y == 1.0).mean() > 0.5
    assert const.any() and (~const).any()
    assert ((distinct > 1) & (distinct <= 3)).any()  # one or two models off the constant


def test_default_fit_constant_targets_get_no_path(knn_store, default_fit):
    X, Y = _arrays(knn_store)
    dm = default_fit
    const = np.ptp(Y, axis=0) == 0
    w = dm["weight"].values
    assert (w[const] == 0).all()
    np.testing.assert_allclose(dm["bias"].values[const], Y[0, const], rtol=1e-12)
    assert (dm["n_iter"].values[const] == 0).all()
    assert (dm["lam"].values[const] == 0).all()
    assert dm["converged"].values.all()
    # validation MSE of the constant predictor on constant outputs
    assert np.allclose(dm["val_mse"].values[const], 0, atol=1e-20)


def test_default_fit_matches_sklearn_at_chosen_lambda(knn_store, default_fit):
    """Every non-constant target against scikit-learn's Lasso on the standardised masks at the
    λ dmdask chose. The default stop is gap ≤ tol·‖y_c‖²/(2n); for the LASSO the primal excess
    bounds the prediction error, P(w) − P(w*) ≥ ‖X̃(w − w*)‖²/(2n), so the in-sample
    predictions differ by an RMS of at most √tol·std(y). Asserted at twice that: the float32
    statistics of the default perturb the problem by ~1e-7 of each column's scale."""
    X, Y = _arrays(knn_store)
    dm = default_fit
    tol = dm.attrs["opt_tol"]
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / np.where(sd > 0, sd, 1.0)
    varying = np.flatnonzero(np.ptp(Y, axis=0) > 0)
    assert varying.size
    for t in varying:
        y = Y[:, t]
        lam = float(dm["lam"].values[t])
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=200000).fit(Xs, y)
        pred_ref = Xs @ ref.coef_ + ref.intercept_
        pred = X @ dm["weight"].values[t].astype(np.float64) + dm["bias"].values[t]
        rms = np.sqrt(np.mean((pred - pred_ref) ** 2))
        assert rms <= 2 * np.sqrt(tol) * y.std() + 1e-6 * np.abs(y).max(), t


def test_budget_warns_and_stops_paths(knn_store):
    _, Y = _arrays(knn_store)
    with pytest.warns(BudgetWarning) as rec:
        dm = dmdask.fit_datamodels(knn_store, max_iter=2)
    bad = ~dm["converged"].values
    assert bad.any()
    msgs = [str(r.message) for r in rec if r.category is BudgetWarning]
    assert len(msgs) == 1 and msgs[0].startswith(f"{bad.sum()} of {Y.shape[1]} target(s)")
    # a spent target's path stops where its budget ran out: no later λ solved on any fold
    vp = dm["val_mse_path"].values[bad]
    assert np.isnan(vp[:, -1]).all()


def test_tied_outputs_keep_the_accelerated_rate(knn_store):
    """A target one or two models off its constant ties nearly every coordinate at λ_max, so
    its support fills the working set at once, where fixed-size subsets give the Gram an
    exact null direction σ, removed by the gauge shift (a line search along σ). The shift must
    not cost FISTA its acceleration: the path takes at most 3× the iterations of the same path
    on the Gram with σ lifted to the mean eigenvalue (no null direction; the solutions differ
    only along σ). Accelerated methods need ~√κ iterations per decade of gap where a method
    that loses its momentum at every check needs ~κ; the shift that reset the momentum took
    6-14× here."""
    X, Y = _arrays(knn_store)
    distinct = np.array([np.unique(y).size for y in Y.T])
    tied = np.flatnonzero((distinct >= 2) & (distinct <= 3))
    assert tied.size
    st = compute_stats(X, Y[:, tied])[0]
    Q = gram._std_gram(st)
    _, q, yv, *_ = gram._std_targets(st, np.arange(tied.size))
    lams = lambda_grid(np.asarray(gram.lambda_max(q)), 10, 1e-3)
    v = st.sigma / np.linalg.norm(st.sigma)
    assert np.linalg.norm(Q @ v) < 1e-9  # fixed-size subsets: σ is null
    its = []
    for QQ, gauge in ((Q, True), (Q + np.trace(Q) / Q.shape[0] * np.outer(v, v), False)):
        prob = gram._Problem(QQ, "fista", 64)
        prob.stack_ratio = 0.0  # the masked route, the default's for large working sets
        if gauge:
            prob.set_gauge(st.sigma)
            assert prob.gauge is not None
        res = gram.gram_path(prob, q, yv, lams, tol=1e-5, max_iter=50000,
                             val_fn=lambda W, idx: np.zeros(len(idx)))
        assert res["converged"].all()
        its.append(res["n_iter"])
    assert (its[0] <= 3 * its[1]).all(), its
