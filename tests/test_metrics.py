"""dmdask.analysis.metrics against scipy / scikit-learn / dattri and direct transcriptions; NaN and
constant-column handling; OPT and the excess-error decomposition; the influence–OLS
identities of REFERENCE §2.5 by exact enumeration."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import mean_squared_error, r2_score, roc_auc_score

from dmdask.analysis import metrics as M
from dmdask.analysis.estimators.store import dom_from_stats, least_squares_from_stats
from dmdask.errors import InputError

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def paired(draw, ties=False):
    n = draw(st.integers(4, 30))
    t = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t))
    y = 0.5 * x + rng.normal(size=(n, t))
    if ties:  # coarse values: many ties
        x, y = np.round(x), np.round(y * 2)
    return x, y


# ------------------------------------------------------------------ vs scipy / sklearn
@SETTINGS
@given(paired(), st.booleans())
def test_pearson_spearman_match_scipy(xy, ties):
    x, y = xy
    if ties:
        x, y = np.round(x), np.round(y)
    p, s = M.pearson(x, y), M.spearman(x, y)
    for k in range(x.shape[1]):
        if np.ptp(x[:, k]) == 0 or np.ptp(y[:, k]) == 0:
            assert np.isnan(p[k]) and np.isnan(s[k])
            continue
        assert p[k] == pytest.approx(stats.pearsonr(x[:, k], y[:, k])[0], abs=1e-10)
        assert s[k] == pytest.approx(stats.spearmanr(x[:, k], y[:, k])[0], abs=1e-10)


@SETTINGS
@given(paired())
def test_mse_r2_match_sklearn(xy):
    x, y = xy
    m, r = M.mse(x, y), M.r2(x, y)
    for k in range(x.shape[1]):
        assert m[k] == pytest.approx(mean_squared_error(y[:, k], x[:, k]), rel=1e-12)
        assert r[k] == pytest.approx(r2_score(y[:, k], x[:, k]), rel=1e-10, abs=1e-12)


@SETTINGS
@given(paired(ties=True))
def test_auc_matches_sklearn_with_ties(xy):
    x, y = xy
    lab = (y > 0).astype(float)
    a = M.auc(x, lab)
    for k in range(x.shape[1]):
        if lab[:, k].min() == lab[:, k].max():
            assert np.isnan(a[k])  # always right / always wrong: skipped
        else:
            assert a[k] == pytest.approx(roc_auc_score(lab[:, k], x[:, k]), abs=1e-12)
    both = lab.min(0) != lab.max(0)
    if lab.min() != lab.max():
        assert M.auc_pooled(x, lab) == pytest.approx(roc_auc_score(lab.ravel(), x.ravel()))
    assert both.sum() + np.isnan(a).sum() == x.shape[1]


def test_auc_constant_score_is_half():
    lab = np.array([0, 1, 1, 0, 1.0])
    assert M.auc(np.ones(5), lab) == 0.5


# ------------------------------------------------------------------ NaN and constants
def test_nan_pairs_dropped_per_column():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    x[[2, 7], 0] = np.nan
    y[[5], 1] = np.nan
    for f, ref in ((M.pearson, stats.pearsonr), (M.spearman, stats.spearmanr)):
        v = f(x, y)
        for k in range(3):
            ok = ~np.isnan(x[:, k]) & ~np.isnan(y[:, k])
            assert v[k] == pytest.approx(ref(x[ok, k], y[ok, k])[0], abs=1e-12)
    m = M.mse(x, y)
    ok = ~np.isnan(x[:, 0])
    assert m[0] == pytest.approx(np.mean((x[ok, 0] - y[ok, 0]) ** 2))
    assert m[2] == pytest.approx(np.mean((x[:, 2] - y[:, 2]) ** 2))
    lab = (y > 0).astype(float)
    lab[np.isnan(y)] = np.nan
    a = M.auc(x, lab)
    ok = ~np.isnan(x[:, 0])
    assert a[0] == pytest.approx(roc_auc_score(lab[ok, 0], x[ok, 0]))


def test_constant_and_empty_columns_are_nan_not_zero():
    x = np.array([[1.0, 1.0, 0.1], [2.0, 1.0, 0.1], [3.0, 1.0, 0.1], [4.0, 1.0, 0.1]])
    y = np.array([[1.0, 2.0, 5.0], [3.0, 1.0, 6.0], [2.0, 4.0, 7.0], [5.0, 3.0, 8.0]])
    for f in (M.pearson, M.spearman):
        v = f(x, y)
        assert np.isfinite(v[0]) and np.isnan(v[1]) and np.isnan(v[2])
    assert np.isnan(M.r2(y, x)[1])  # constant actual
    allnan = np.full((4, 1), np.nan)
    assert np.isnan(M.mse(allnan, allnan)[0])
    s = M.summarize(M.pearson(x, y))
    assert s["n_skipped"] == 2 and s["n_used"] == 1 and s["mean"] == pytest.approx(
        stats.pearsonr(x[:, 0], y[:, 0])[0])


def test_inf_and_bad_labels_refused():
    with pytest.raises(InputError):
        M.mse(np.array([1.0, np.inf]), np.array([1.0, 2.0]))
    with pytest.raises(InputError):
        M.auc(np.array([1.0, 2.0]), np.array([0.0, 2.0]))
    with pytest.raises(InputError):
        M.pearson(np.ones((3, 2)), np.ones((3, 3)))


def test_summarize_t_and_bootstrap():
    rng = np.random.default_rng(3)
    v = rng.normal(0.3, 0.1, size=200)
    v[:5] = np.nan
    t = M.summarize(v)
    lo, hi = stats.t.interval(0.95, 194, loc=np.nanmean(v), scale=stats.sem(v[5:]))
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((lo, hi))
    b = M.summarize(v, ci="bootstrap", n_boot=4000, seed=1)
    assert b["ci_low"] == pytest.approx(lo, abs=0.004) and b["ci_high"] == pytest.approx(hi, abs=0.004)
    assert t["n_skipped"] == b["n_skipped"] == 5


# ------------------------------------------------------------------ LDS
def _lds_problem(seed=0, m=60, N=30, T=6, R=3, noise=0.5):
    rng = np.random.default_rng(seed)
    masks = np.argsort(rng.random((m, N)), axis=1) < N // 2  # fixed-size α = 0.5
    W = rng.normal(size=(T, N))
    runs = masks @ W.T + noise * rng.normal(size=(R, m, T))
    scores = W + rng.normal(scale=0.7, size=W.shape)
    return masks, runs.mean(0), scores, W


def _trak_lds(masks, actual, scores):
    """Direct transcription of TRAK's evaluation: ``preds = masks.float() @ scores`` with
    scores [n_train, n_targets], ``spearmanr`` per target, mean."""
    try:
        import torch

        preds = (torch.as_tensor(masks).float() @ torch.as_tensor(scores.T).float()).numpy()
    except ImportError:  # the torch extra is optional: the same float32 product in NumPy
        preds = masks.astype(np.float32) @ scores.T.astype(np.float32)
    rs = [stats.spearmanr(preds[:, i], actual[:, i])[0] for i in range(actual.shape[1])]
    return np.array(rs), float(np.mean(rs))


def test_lds_matches_trak_transcription():
    masks, actual, scores, _ = _lds_problem()
    res = M.lds(scores, masks, actual)
    per, mean = _trak_lds(masks, actual, scores)
    np.testing.assert_allclose(res.per_target, per, atol=1e-6)  # float32 preds in TRAK
    assert res.mean == pytest.approx(mean, abs=1e-6)
    assert res.n_skipped == 0 and res.ci_low < res.mean < res.ci_high


def test_lds_matches_dattri():
    torch = pytest.importorskip("torch")
    dattri_metric = pytest.importorskip("dattri.metric")
    masks, actual, scores, _ = _lds_problem(seed=4)
    idx = torch.as_tensor(np.stack([np.flatnonzero(r) for r in masks]))  # fixed-size subsets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corr, _ = dattri_metric.lds(torch.as_tensor(scores.T), (torch.as_tensor(actual), idx))
    res = M.lds(scores, masks, actual)
    np.testing.assert_allclose(res.per_target, corr.numpy(), atol=1e-10)


def test_lds_invariance_and_perfect_score():
    masks, actual, scores, W = _lds_problem(seed=2)
    base = M.lds(scores, masks, actual).per_target
    shifted = M.lds(3.0 * scores + 7.0, masks, actual).per_target  # a > 0, fixed-size subsets
    np.testing.assert_allclose(shifted, base, atol=1e-12)
    flipped = M.lds(-scores, masks, actual).per_target
    np.testing.assert_allclose(flipped, -base, atol=1e-12)
    exact = M.lds(W, masks, masks @ W.T)  # true additive model, noiseless
    np.testing.assert_allclose(exact.per_target, 1.0)


def test_lds_skips_and_counts_constant_targets():
    masks, actual, scores, _ = _lds_problem(seed=5)
    scores[1] = 0.0  # constant prediction
    actual[:, 2] = 4.0  # constant output
    actual[:58, 3] = np.nan  # too few subsets
    res = M.lds(scores, masks, actual)
    assert np.isnan(res.per_target[[1, 2, 3]]).all() and res.n_skipped == 3
    assert res.mean == pytest.approx(np.mean(res.per_target[[0, 4, 5]]))


# ------------------------------------------------------------------ OPT and decomposition
def test_opt_recovers_known_noise_and_decomposition():
    rng = np.random.default_rng(7)
    m, R, T = 400, 4, 3
    s2 = np.array([0.25, 1.0, 4.0])
    h = rng.normal(size=(m, T)) * 2  # E[f | S] per subset
    runs = h[None] + np.sqrt(s2) * rng.normal(size=(R, m, T))
    y = runs.reshape(R * m, T)
    group = np.tile(np.arange(m), R)
    opt, used = M.opt_floor(y, group)
    se = s2 * np.sqrt(2 / (m * (R - 1)))  # sd of the mean of unbiased s² (Gaussian)
    assert np.all(np.abs(opt - s2) < 4 * se) and (used == m).all()
    # E(f − g)² = OPT + E(E[f|S] − g)² for a predictor g of the subset
    g = h + rng.normal(scale=0.5, size=h.shape)
    mse_runs = M.mse(np.tile(g, (R, 1)), y)
    excess_true = np.mean((h - g) ** 2, axis=0)
    excess = M.excess_error(mse_runs, opt)
    assert np.all(np.abs(excess - excess_true) < 4 * se + 4 * s2 / np.sqrt(m * R))
    # against the replicate mean: E(f̄ − g)² = excess + OPT/R
    _, fbar, _ = M.group_means(y, group)
    mse_mean = M.mse(g, fbar)
    assert np.all(np.abs(M.excess_error(mse_mean, opt, against_mean_of=R) - excess_true)
                  < 4 * se + 4 * s2 / np.sqrt(m))
    # the decomposition is exact in-sample with the sample quantities
    fb = fbar[group]
    within = np.mean((y - fb) ** 2, axis=0)
    np.testing.assert_allclose(mse_runs, within + np.mean((fb - np.tile(g, (R, 1))) ** 2, 0))


def test_opt_nan_and_single_runs():
    y = np.array([[1.0, 1.0], [3.0, np.nan], [5.0, 2.0], [2.0, 9.0], [np.nan, 4.0]])
    group = np.array([0, 0, 1, 2, 2])
    opt, used = M.opt_floor(y, group)
    # target 0: group 0 {1, 3} s²=2; group 1 single; group 2 {2} single → OPT = 2
    # target 1: group 0 {1} single; group 1 {2}; group 2 {9, 4} s²=12.5
    np.testing.assert_allclose(opt, [2.0, 12.5])
    np.testing.assert_array_equal(used, [1, 1])
    opt1, used1 = M.opt_floor(y[[0, 2]], np.array([0, 1]))  # no replicates at all
    assert np.isnan(opt1).all() and (used1 == 0).all()
    assert np.isnan(M.noise_adjusted_r2(1.0, 2.0, 3.0))
    assert M.noise_adjusted_r2(1.0, 3.0, 0.5) == pytest.approx(1 - 0.5 / 2.5)


# ------------------------------------------------------------------ REFERENCE §2.5
def _weighted_stats(X, y, p):
    Xf = X.astype(float)
    return (p.sum(), Xf.T @ (p[:, None] * Xf), Xf.T @ p, Xf.T @ (p * y)[:, None],
            np.array([p @ y]))


@pytest.mark.parametrize("alpha_k", [2, 4, 5])
def test_influence_ols_identities_fixed_size(alpha_k):
    N = 8
    rng = np.random.default_rng(alpha_k)
    X = np.array([[j in c for j in range(N)] for c in itertools.combinations(range(N), alpha_k)])
    f = rng.normal(size=len(X)) + X @ rng.normal(size=N)  # arbitrary output of the subset
    p = np.full(len(X), 1.0 / len(X))
    n, G, s, C, sy = _weighted_stats(X, f, p)
    infl, _ = dom_from_stats(n, s, C, sy)
    infl = infl[0]
    a = alpha_k / N
    cov = (X * (f - f.mean())[:, None]).mean(0)
    np.testing.assert_allclose(cov, a * (1 - a) * infl, atol=1e-12)  # Cov(m_j, f)
    assert abs(infl.sum()) < 1e-12  # Σ_j infl_j = 0 (fixed size)
    w, b = least_squares_from_stats(n, G, s, C, sy)
    np.testing.assert_allclose(w[0], (N - 1) / N * infl, atol=1e-12)
    # the OLS predictor is the least-squares one: residual orthogonal to the design
    resid = f - (X @ w[0] + b[0])
    np.testing.assert_allclose(X.T @ (p * resid), 0.0, atol=1e-12)


def test_influence_equals_ols_bernoulli():
    N, q = 8, 0.3
    rng = np.random.default_rng(11)
    X = np.array(list(itertools.product([0, 1], repeat=N)), dtype=bool)
    p = np.prod(np.where(X, q, 1 - q), axis=1)
    f = rng.normal(size=len(X)) + np.sin(X @ rng.normal(size=N))  # non-additive
    n, G, s, C, sy = _weighted_stats(X, f, p)
    infl, _ = dom_from_stats(n, s, C, sy)
    w, _ = least_squares_from_stats(n, G, s, C, sy)
    np.testing.assert_allclose(w[0], infl[0], atol=1e-12)
    Ef = p @ f
    cov = X.T.astype(float) @ (p * (f - Ef))
    np.testing.assert_allclose(cov, q * (1 - q) * infl[0], atol=1e-12)
