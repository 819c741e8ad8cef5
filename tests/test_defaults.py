"""The *default* fit against independent references (issue 15, item 6).

Every other comparison with scikit-learn runs at tight tolerances, which switch the float32
paths off. Here the fit runs as users run it — ``fit_datamodels`` defaults: relative duality
gap tol 1e-5, so float32 XᵀY in the statistics pass, float32 GEMMs in the path, a float32
validation Gram; CV selection (few models), early stop — and is compared with scikit-learn at
float64 and a tight tolerance on the same problem, with tolerances derived from what the
defaults promise (no thresholds fitted to observed errors):

* every solve stops at a duality gap ≤ tol·‖y_c‖²/(2n) (REFERENCE §1.5). For the LASSO
  objective F(w) = ½wᵀQw − qᵀw + λ‖w‖₁ and its minimiser w*, optimality of w* gives
  F(w) − F(w*) ≥ ½(w − w*)ᵀQ(w − w*), so  ΔᵀQΔ ≤ 2·gap  for Δ = w̃ − w̃* (standardised).
* predictions differ by Z·Δ (Z the standardised masks; the fixed-size null direction σ has
  Zσ = 0 on every fixed-size row, so it changes no prediction). On validation rows
  rms(ZᵥΔ)² = ΔᵀQᵥΔ ≤ ρ·ΔᵀQΔ ≤ 2ρ·gap with ρ = λ_max(Q^{+½} Qᵥ Q^{+½}) (Qᵥ the validation
  rows' second moments in the training standardisation), and the validation MSE moves by at
  most 2·sqrt(MSE*)·r + r² with r that rms.
* weights: on S = supp(w) ∪ supp(w*), ‖Δ‖₂² ≤ 2·gap/κ_S with κ_S = λ_min(Q_SS).
* float32 data (XᵀY, the validation Gram, GEMMs) perturb these by ~1e-7 relative, far below
  the sqrt(gap) ~ 3e-3 scale of the bounds: a factor 2 on r and on ‖Δ‖ covers them.
"""

import numpy as np
import pytest
from sklearn.linear_model import Lasso, lasso_path

import dmdask
from dmdask.fit.datamodels import fit_datamodels
from dmdask.fit.solve import PathOptions, Split, get_solver
from dmdask.fit.splits import fold_bounds, holdout_size
from dmdask.fit.stats import compute_stats
from dmdask.store.runstore import create_jobless_store, open_store, write_block

# fit_datamodels' defaults, for the tests that call the solver directly
TOL = 1e-5
DEFAULTS = PathOptions(n_lambdas=30, lambda_ratio=1e-3, tol=TOL, max_iter=5000,
                       early_stop=True)
SLACK = 2.0  # float32 data and GEMMs on top of the duality-gap bounds (module docstring)


def _outputs(X, seed, T):
    """Margin-like outputs: sparse planted effects, per-target offsets and scales spanning
    five orders of magnitude (a weak target is decided at its own scale, not the others')."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    W = np.zeros((d, T))
    for t in range(T):
        W[rng.choice(d, 8, replace=False), t] = rng.standard_normal(8)
    scale = np.logspace(-3, 2, T)
    Y = (X @ W + rng.standard_normal((X.shape[0], T))) * scale + 50 * scale * rng.random(T)
    return Y.astype(np.float32)


def _std(X, rows):
    Xf = X[rows].astype(np.float64)
    mu, sd = Xf.mean(0), Xf.std(0)
    inv = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    return mu, sd, inv


def _rho(Z, Zv):
    """λ_max(Q^{+½} Qᵥ Q^{+½}): how much more a direction can move validation predictions
    than the training objective allows (null directions of Q move neither)."""
    Q = Z.T @ Z / Z.shape[0]
    Qv = Zv.T @ Zv / Zv.shape[0]
    ev, U = np.linalg.eigh(Q)
    keep = ev > 1e-10 * ev.max()
    P = U[:, keep] / np.sqrt(ev[keep])
    return float(np.linalg.eigvalsh(P.T @ Qv @ P).max())


def _splits(n, kind, K=5):
    """(training rows, validation rows) of each fold (dmdask's convention, base.py)."""
    if kind == "holdout":
        n_val = holdout_size(n, 0.1)
        return [(np.arange(n_val, n), np.arange(n_val))]
    b = fold_bounds(n, K)
    return [(np.setdiff1d(np.arange(n), np.arange(b[k], b[k + 1])), np.arange(b[k], b[k + 1]))
            for k in range(K)]


def _reference_curve(X, Y, lambdas, kind, K=5):
    """Validation curves by scikit-learn (float64, tight tolerance) under dmdask's convention
    (each fold standardised on its training part, raw-space MSE on its validation part, CV:
    the mean over folds), and for each target and λ the tolerance the default fit must meet
    (module docstring)."""
    T, L = lambdas.shape
    curve = np.zeros((T, L))
    tolc = np.zeros((T, L))
    splits = _splits(X.shape[0], kind, K)
    K = len(splits)
    for tr, val in splits:
        mu, sd, inv = _std(X, tr)
        Z = (X[tr] - mu) * inv
        Zv = (X[val] - mu) * inv
        rho = _rho(Z, Zv)
        G = Z.T @ Z
        for t in range(T):
            y = Y[tr, t].astype(np.float64)
            yc = y - y.mean()
            _, coefs, _ = lasso_path(Z, yc, alphas=lambdas[t], precompute=G, Xy=Z.T @ yc,
                                     tol=1e-13, max_iter=10**6)
            pred = y.mean() + Zv @ coefs  # [n_val, L]
            mse = ((pred - Y[val, t, None]) ** 2).mean(0)
            gap = TOL * (yc @ yc) / len(tr) / 2
            r = SLACK * np.sqrt(2 * rho * gap)
            curve[t] += mse / K
            tolc[t] += (2 * np.sqrt(mse) * r + r * r) / K
    return curve, tolc


def _reference_refit(X, y, lam):
    """Raw-space (w, b) of the LASSO at ``lam`` on all rows (scikit-learn, tight)."""
    mu, sd, inv = _std(X, np.arange(X.shape[0]))
    Z = (X - mu) * inv
    m = Lasso(alpha=lam, tol=1e-13, max_iter=10**6).fit(Z, y.astype(np.float64))
    w = m.coef_ * inv
    return w, m.intercept_ - mu @ w, Z


def _check_refit(X, y, w, lam):
    """dmdask's refit weights ``w`` (raw) against the tight reference at the same λ:
    ‖PΔ‖₂ ≤ SLACK·sqrt(2·gap/κ₊) for Δ = w̃ − w̃* on S = supp(w) ∪ supp(w*), κ₊ the smallest
    nonzero eigenvalue of Q_SS and P the projection off its null space (module docstring).
    A null direction of Q_SS arises where S spans a fixed-size design's σ: along it only the
    L1 term decides (raw weights shift by a constant, the bias back), and no tolerance on the
    gap bounds that shift, so it is left out; predictions do not depend on it."""
    w_ref, _, Z = _reference_refit(X, y, lam)
    sd = X.astype(np.float64).std(0)
    S = np.flatnonzero((w != 0) | (w_ref != 0))
    if S.size == 0:
        return
    yc = y.astype(np.float64) - y.mean()
    gap = TOL * (yc @ yc) / X.shape[0] / 2
    ev, U = np.linalg.eigh(Z[:, S].T @ Z[:, S] / X.shape[0])
    pos = ev > 1e-10 * ev.max()
    delta = U[:, pos].T @ ((w - w_ref) * sd)[S]
    bound = SLACK * np.sqrt(2 * gap / ev[pos].min())
    assert np.linalg.norm(delta) <= bound, (np.linalg.norm(delta), bound)
    # and no weight outside the reference's support beyond what that bound allows
    assert np.all(np.abs((w * sd)[w_ref == 0]) <= bound)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real run store (default fixed-size sampling) with margins written as training would."""
    d, T, B = 100, 5, 250
    path = str(tmp_path_factory.mktemp("defaults") / "run.zarr")
    create_jobless_store(path, d, T, block_size=B, seed=3)
    dmdask.add_models(path, "random", n=6 * B, alpha=0.5)
    X = open_store(path).mask.values
    Y = _outputs(X.astype(np.float64), seed=4, T=T)
    for blk in range(X.shape[0] // B):
        write_block(path, blk, Y[blk * B:(blk + 1) * B])
    return path, X, Y


def test_default_fit_matches_a_tight_float64_reference(store):
    path, X, Y = store
    dm = fit_datamodels(path)  # every setting at its default
    assert dm.attrs["selection"] == "cv" and dm.attrs["opt_tol"] == TOL
    assert dm.converged.values.all()
    K = int(dm.attrs["opt_folds"])
    lambdas = dm.lambdas.values
    vpath = dm.val_mse_path.values
    n = X.shape[0]
    # the grid: λ_max of all fitting rows (as LassoCV), from float32 XᵀY at each target's
    # own scale: relative 1e-6 holds for targets 1e5 apart in scale
    mu, sd, inv = _std(X, np.arange(n))
    Yc = Y.astype(np.float64) - Y.astype(np.float64).mean(0)
    lam_max = np.abs(((X - mu) * inv).T @ Yc).max(0) / n
    np.testing.assert_allclose(lambdas[:, 0], lam_max, rtol=1e-6)
    curve, tolc = _reference_curve(X, Y, lambdas, "cv", K)
    for t in range(Y.shape[1]):
        done = ~np.isnan(vpath[t])
        m = int(done.sum())
        assert done[:m].all() and m >= 10  # early stop truncates a prefix, never before 10 λ
        # the validation-MSE curve, λ by λ, within the bound the tolerance implies
        err = np.abs(vpath[t, :m] - curve[t, :m])
        assert np.all(err <= tolc[t, :m]), (t, (err / tolc[t, :m]).max())
        # the chosen λ: the reference's best on the same solved prefix, or a λ whose
        # reference MSE is within the two curves' combined tolerance of it (a near tie that
        # no fit at this tolerance can resolve)
        i_dm = int(np.flatnonzero(lambdas[t] == dm.lam.values[t])[0])
        i_ref = int(np.argmin(curve[t, :m]))
        assert (i_dm == i_ref
                or curve[t, i_dm] - curve[t, i_ref] <= tolc[t, i_dm] + tolc[t, i_ref]), t
        np.testing.assert_allclose(dm.val_mse.values[t], vpath[t, i_dm], rtol=1e-12)
        # the refit on all rows at the chosen λ
        _check_refit(X, Y[:, t], dm.weight.values[t].astype(np.float64), dm.lam.values[t])


def test_float32_xty_error_is_bounded_per_target_at_its_own_scale():
    """The default statistics pass forms XᵀY in float32 on block-mean-shifted outputs. Each
    centred entry's error is bounded by the classic dot-product bound at *its own target's*
    spread — (k+2)·u·Σᵢ xᵢⱼ|yᵢ − c_b| ≤ (k+2)·u·sqrt(sⱼ)·‖y − ȳ‖ (k rows summed in float32,
    u = 2⁻²⁴; block means minimise each block's spread) — whatever that target's offset and
    whatever the other targets' scales: the weak targets are the ones λ decides."""
    rng = np.random.default_rng(7)
    n, d, k = 3000, 60, 512
    X = rng.random((n, d)) < 0.3
    T = 6
    scale = np.logspace(-4, 4, T)  # eight orders of magnitude between targets
    offset = scale * np.array([0, 1e3, -1e3, 10, 1e4, 1])  # offsets up to 1e4 spreads
    Y = ((X @ rng.standard_normal((d, T)) + rng.standard_normal((n, T))) * scale
         + offset).astype(np.float32)
    got = compute_stats(X, Y, row_block_size=k, c_dtype="float32")[0]
    Xf, Yf = X.astype(np.float64), Y.astype(np.float64)
    Yc = Yf - Yf.mean(0)
    ref = Xf.T @ Yc  # the centred XᵀY, float64
    Cc = got.C - np.outer(got.s, got.sy) / got.n
    u = 2.0**-24
    bound = (k + 2) * u * np.sqrt(got.s)[:, None] * np.linalg.norm(Yc, axis=0)[None, :]
    # the float64 centring adds ~1e-16 of n·|offset| per entry
    bound += 1e-14 * n * np.abs(Yf.mean(0))[None, :]
    assert np.all(np.abs(Cc - ref) <= bound), (np.abs(Cc - ref) / bound).max()
    # the bound is about each target's own spread: the weakest target's error is ~1e-8
    # below the strongest one's, not swamped by it
    err = np.abs(Cc - ref).max(0)
    assert err[0] < 1e-6 * err[-1]


def _edge_columns(seed=11):
    """Masks with an all-one column, an all-zero one, and one that is 1 only on some of the
    first n_val rows: all-zero on the holdout's training rows and on CV fold 0's (whose
    validation rows hold the first n_val), not overall."""
    rng = np.random.default_rng(seed)
    n, d, T = 1200, 40, 4
    X = np.argsort(rng.random((n, d)), axis=1) < d // 2  # fixed-size, as the default sampling
    Y = _outputs(X.astype(np.float64), seed, T)
    n_val = holdout_size(n, 0.1)
    assert n_val <= fold_bounds(n, 5)[1]
    extra = np.zeros((n, 3), bool)
    extra[:, 0] = True
    extra[:n_val, 2] = rng.random(n_val) < 0.5
    Xe = np.concatenate([X[:, :7], extra[:, :1], X[:, 7:20], extra[:, 1:2], X[:, 20:],
                         extra[:, 2:]], axis=1)
    pos = {"one": 7, "zero": 21, "partly": Xe.shape[1] - 1}
    return Xe, Y, pos


@pytest.mark.parametrize("kind", ["cv", "holdout"])
def test_constant_columns_through_the_production_standardisation(kind):
    """All-zero and all-one columns get weight exactly 0 and leave the grid, the validation
    curve, the chosen λ and every other weight as a fit without them; a column constant on a
    split's training rows only is dropped there and used elsewhere (the curve matches
    scikit-learn's, which standardises it the same way)."""
    Xe, Y, pos = _edge_columns()
    solver = get_solver("gram")
    got = solver.fit(Xe, Y, split=Split(kind), options=DEFAULTS)
    keep = np.setdiff1d(np.arange(Xe.shape[1]), [pos["one"], pos["zero"]])
    base = solver.fit(Xe[:, keep], Y, split=Split(kind), options=DEFAULTS)
    assert got.converged.all() and base.converged.all()
    assert (got.weight[:, pos["one"]] == 0).all() and (got.weight[:, pos["zero"]] == 0).all()
    # the same problem: the same grid and curve up to floating-point order (zero rows and
    # columns in the Grams change only the order of sums; 1e-6 is far above float64 order
    # effects and far below the curve tolerance) and the same choices
    np.testing.assert_allclose(got.lambdas, base.lambdas, rtol=1e-12)
    np.testing.assert_allclose(got.val_mse_path, base.val_mse_path, rtol=1e-6)
    np.testing.assert_array_equal(got.lam, base.lam)
    for t in range(Y.shape[1]):
        # the other weights, against the tight reference, with and without the columns
        _check_refit(Xe, Y[:, t], got.weight[t], got.lam[t])
        _check_refit(Xe[:, keep], Y[:, t], base.weight[t], base.lam[t])
    curve, tolc = _reference_curve(Xe, Y, got.lambdas, kind)
    done = ~np.isnan(got.val_mse_path)
    assert np.all(np.abs(got.val_mse_path - curve)[done] <= tolc[done])
