"""Leave-one-out (REFERENCE §5): Sherman–Morrison against brute-force refits, the one-Newton-step
LOO against brute-force logistic fits (scikit-learn), and the store estimators ``loo_exact``,
``loo_newton`` and ``loo_retrain`` against each other on the digits."""

from __future__ import annotations

import numpy as np
import pytest

import dmdask
from dmdask.analysis import estimators
from dmdask.errors import JobError
from dmdask.values.loo import margins_from_logits, newton_loo_logits, ridge_fit, ridge_loo_logits


def _problem(rng, n, p, C, intercept):
    X = rng.normal(size=(n, p))
    if intercept:
        X[:, -1] = 1.0
    return X, rng.normal(size=(n, C)), rng.normal(size=(7, p)) if not intercept else \
        np.hstack([rng.normal(size=(7, p - 1)), np.ones((7, 1))])


@pytest.mark.parametrize("intercept", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_sherman_morrison_equals_refits(intercept, lam):
    """β₍₋ᵢ₎, PRESS residuals and test-point effects equal refits without row i to 1e-10,
    OLS and ridge, with and without an (unpenalised) intercept, on random problems."""
    rng = np.random.default_rng(3 + int(intercept) + int(10 * lam))
    for n, p, C in ((30, 6, 1), (25, 9, 3)):
        X, Y, Xt = _problem(rng, n, p, C, intercept)
        pen = np.full(p, lam)
        if intercept:
            pen[-1] = 0.0
        beta, Hinv = ridge_fit(X, Y, pen)
        E = Y - X @ beta
        h = np.einsum("ip,pq,iq->i", X, Hinv, X)
        loo = np.concatenate([lo for _, _, lo in ridge_loo_logits(X, Y, pen, Xt, chunk=4)])
        for i in range(n):
            keep = np.arange(n) != i
            b_i = np.linalg.solve(X[keep].T @ X[keep] + np.diag(pen), X[keep].T @ Y[keep])
            np.testing.assert_allclose(loo[i], Xt @ b_i, rtol=0, atol=1e-10)
            # PRESS: the left-out residual is e_i/(1 − h_ii)
            np.testing.assert_allclose(Y[i] - X[i] @ b_i, E[i] / (1 - h[i]), rtol=0, atol=1e-10)


def _fit_logistic(X, y, l2, C):
    """scikit-learn's multinomial logistic regression in dmdask's parametrisation: mean CE +
    (l2/2)‖W‖², intercept unpenalised; weights [d + 1, C]."""
    from sklearn.linear_model import LogisticRegression

    r = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=100_000).fit(X, y)
    W = np.vstack([r.coef_.T, r.intercept_])
    assert W.shape[1] == C
    return W


def _jac(Phi, C):
    J = np.zeros((len(Phi), C, Phi.shape[1], C))
    for c in range(C):
        J[:, c, :, c] = Phi
    return J.reshape(len(Phi), C, -1)


def newton_vs_exact(seed, n, l2, d=5, C=3, m=15):
    """Relative L1 error of the Newton-step LOO effects on m test margins against refitting
    without each of the n rows (scikit-learn), and the mean |exact effect|."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Wt = rng.normal(size=(d, C))
    y = np.array([rng.choice(C, p=np.exp(z - z.max()) / np.exp(z - z.max()).sum())
                  for z in X @ Wt])
    if np.unique(y).size < C:  # every class present, else sklearn fits fewer classes
        y[:C] = np.arange(C)
    Xt, yt = rng.normal(size=(m, d)), rng.integers(0, C, m)
    W = _fit_logistic(X, y, l2, C)
    Phi, Phit = np.hstack([X, np.ones((n, 1))]), np.hstack([Xt, np.ones((m, 1))])
    pen = np.zeros((d + 1, C))
    pen[:d] = l2
    loo = np.concatenate([lo for _, lo in newton_loo_logits(
        _jac(Phi, C), y, Phi @ W, W.ravel(), pen.ravel(), _jac(Phit, C), Phit @ W)])
    full = margins_from_logits(Phit @ W, yt)
    newton = full - margins_from_logits(loo, yt)
    exact = np.array([full - margins_from_logits(
        Phit @ _fit_logistic(np.delete(X, i, 0), np.delete(y, i), l2, C), yt)
        for i in range(n)])
    return np.abs(newton - exact).sum() / np.abs(exact).sum(), np.abs(exact).mean()


def test_newton_loo_against_refits():
    """On well-conditioned L2-logistic problems (n = 60, d = 5, 3 classes) the Newton-step
    effects are within 5% (relative L1) of refitting, over several random problems
    (the distribution's maximum); the error shrinks as λ grows and as n grows (O(1/n))."""
    errs = [newton_vs_exact(s, 60, 0.05)[0] for s in range(4)]
    assert max(errs) < 0.05
    assert np.median(errs) > 1e-6  # an approximation, not a refit in disguise
    hi_lam = [newton_vs_exact(s, 60, 0.5)[0] for s in range(4)]
    assert np.median(hi_lam) < np.median(errs)
    big_n = [newton_vs_exact(s, 240, 0.05)[0] for s in range(2)]
    assert max(big_n) < np.median(errs)


@pytest.fixture(scope="module")
def ridge_store(tmp_path_factory):
    p = tmp_path_factory.mktemp("loo") / "ridge.zarr"
    dmdask.create_store(p, "jobs.digits:DigitsRidge", 0, 0.5)
    return str(p)


def test_loo_exact_equals_retraining_on_the_store(ridge_store):
    """On the least-squares digits job, Sherman–Morrison from one fit equals the N + 1
    trainings through the store (float32 margins); a rerun trains nothing."""
    tg = np.arange(0, 500, 25)
    ex = estimators.compute(ridge_store, "loo_exact", targets=tg)
    rt = estimators.compute(ridge_store, "loo_retrain", targets=tg, workers=1)
    N = ex.sizes["train"]
    assert rt.attrs["n_trainings"] == N + 1 and rt.attrs["n_trained_now"] == N + 1
    scale = np.abs(ex.values).max()
    np.testing.assert_allclose(rt.values, ex.values, rtol=0, atol=1e-5 * max(scale, 1.0))
    n_before = dmdask.store_info(ridge_store)["n_models"]
    again = estimators.compute(ridge_store, "loo_retrain", targets=tg[:3])
    assert again.attrs["n_trained_now"] == 0
    assert dmdask.store_info(ridge_store)["n_models"] == n_before
    np.testing.assert_array_equal(again.values, rt.values[:3])


def test_loo_newton_against_job_refits(tmp_path):
    """DigitsLogistic: the Newton-step effects of 12 training examples on all targets are within
    5% (relative L1) of refitting the job without each of them (its own Newton-CG solver)."""
    pytest.importorskip("torch")
    p = tmp_path / "log.zarr"
    dmdask.create_store(p, "jobs.digits:DigitsLogistic", 0, 0.5)
    nw = estimators.compute(p, "loo_newton")
    from jobs.digits import DigitsLogistic

    job = DigitsLogistic()
    idx = np.arange(0, job.n_train, job.n_train // 12)[:12]
    masks = np.ones((idx.size + 1, job.n_train), bool)
    masks[np.arange(1, idx.size + 1), idx] = False
    m = job.train_block(masks, np.zeros(idx.size + 1, np.uint64)).astype(np.float64)
    exact = (m[0][None] - m[1:]).T  # [targets, 12]
    err = np.abs(nw.values[:, idx] - exact).sum() / np.abs(exact).sum()
    assert err < 0.05


def test_exact_loo_refuses_a_nonlinear_job(tmp_path):
    """A non-linear job asked for exact LOO: one line naming the alternatives."""
    p = tmp_path / "log.zarr"
    dmdask.create_store(p, "jobs.digits:DigitsLogistic", 0, 0.5)
    with pytest.raises(JobError, match="least-squares job") as e:
        estimators.compute(p, "loo_exact")
    assert "\n" not in str(e.value) and "loo_newton" in str(e.value)


def test_cli_loo(ridge_store, tmp_path):
    """``dmdask loo`` saves the estimator's effects as a score Dataset that evaluate's loader
    reads back; a non-linear job asked for exact LOO exits 2 with one line."""
    import subprocess
    import sys

    from dmdask.analysis.scores import load_scores

    out = tmp_path / "loo.zarr"
    r = subprocess.run([sys.executable, "-m", "dmdask.cli", "loo", ridge_store, "--method",
                        "exact", "--targets", "0-4", "--out", str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "5 targets x 1297 training examples" in r.stdout
    back = load_scores(str(out), ds=dmdask.open_store(ridge_store))
    ref = estimators.compute(ridge_store, "loo_exact", targets=np.arange(5))
    np.testing.assert_allclose(back.values, ref.values, rtol=1e-12, atol=0)
    p = tmp_path / "log.zarr"
    dmdask.create_store(p, "jobs.digits:DigitsLogistic", 0, 0.5)
    from cli_inprocess import invoke

    r = invoke("loo", p, "--method", "exact")  # a refusal: in process
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "least-squares" in r.stderr

