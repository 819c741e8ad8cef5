"""Exact p-biased Fourier quantities and RESIDUALESTIMATION (REFERENCE.md §6.2–6.4, Checks §6),
against independent references: weighted least squares and conditional means by enumeration,
the ρ-pair kernel, and Monte Carlo of the pair sampler."""

from __future__ import annotations

import numpy as np
import pytest

from dmdask.errors import InputError
from dmdask.verify import fourier, residual
from dmdask.verify.learners import make_learner

P = 0.3


def _wls(s: np.ndarray, f: np.ndarray, w: np.ndarray):
    """Weighted OLS of f on [1, s]: (intercept, slopes, weighted MSE) — the reference."""
    x = np.hstack([np.ones((len(s), 1)), s])
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(x * sw, f * sw[:, 0], rcond=None)
    return coef[0], coef[1:], float((w * (f - x @ coef) ** 2).sum())


@pytest.fixture(params=[0, 1, 2])
def table(request):
    rng = np.random.default_rng(request.param)
    return rng.normal(size=2 ** 8)


def test_optimal_linear_model_and_its_mse_are_exact(table):
    s = fourier.cube(8).astype(float)
    w = fourier.cube_weights(8, P)
    q = fourier.exact(table, P)
    a0, a, mse = _wls(s, table, w)
    np.testing.assert_allclose(q.theta0, a0, atol=1e-12)
    np.testing.assert_allclose(q.theta, a, atol=1e-12)
    np.testing.assert_allclose(q.b_ge2, mse, atol=1e-12)
    # Parseval
    np.testing.assert_allclose(q.weights.sum(), (w * table ** 2).sum(), rtol=1e-12)
    # the same model in indicator coding: b + wᵀm with m = (s + 1)/2
    m = (s + 1) / 2
    b, wi, mse_i = _wls(m, table, w)
    np.testing.assert_allclose(q.w, wi, atol=1e-11)
    np.testing.assert_allclose(q.b, b, atol=1e-11)
    np.testing.assert_allclose(mse_i, mse, atol=1e-12)


def test_expected_influence_is_twice_the_slope(table):
    s = fourier.cube(8)
    w = fourier.cube_weights(8, P)
    q = fourier.exact(table, P)
    mu, sigma = fourier.bias_constants(P)
    for i in range(8):
        on, off = s[:, i] > 0, s[:, i] < 0
        infl = (w[on] * table[on]).sum() / w[on].sum() - (w[off] * table[off]).sum() / w[off].sum()
        np.testing.assert_allclose(infl, 2.0 / sigma * q.coef1[i], atol=1e-12)
        np.testing.assert_allclose(infl, q.w[i], atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.55, 1.0])
def test_noise_stability_kernel_equals_weight_polynomial(table, rho):
    q = fourier.exact(table, P)
    np.testing.assert_allclose(fourier.noise_stability(table, P, rho), q.h(rho), rtol=1e-12,
                               atol=1e-12)
    if rho == 0.0:
        np.testing.assert_allclose(q.h(0.0), q.weights[0], rtol=1e-12)
    if rho == 1.0:
        np.testing.assert_allclose(q.h(1.0), q.mean_sq, rtol=1e-12)


def test_known_structures():
    s = fourier.cube(6).astype(float)
    mu, sigma = fourier.bias_constants(P)
    phi = (s - mu) / sigma
    c = np.array([0.5, -1.0, 0.0, 2.0, 0.3, 0.0])
    assert fourier.exact(phi @ c, P).b_ge2 == pytest.approx(0.0, abs=1e-12)
    q = fourier.exact(phi[:, 1] * phi[:, 4], P)
    np.testing.assert_allclose(q.weights, [0, 0, 1, 0, 0, 0, 0], atol=1e-12)
    maj = np.sign(s[:, :3].sum(axis=1))
    qm = fourier.exact(maj, 0.5)
    assert qm.weights[1] > 0 and qm.weights[3] > 0
    np.testing.assert_allclose(qm.weights[[0, 2, 4, 5, 6]], 0, atol=1e-12)
    np.testing.assert_allclose(qm.weights[[1, 3]], [0.75, 0.25], atol=1e-12)


def test_gap_formula_equals_enumerated_excess_mse(table):
    s = fourier.cube(8).astype(float)
    w = fourier.cube_weights(8, P)
    q = fourier.exact(table, P)
    rng = np.random.default_rng(5)
    for _ in range(5):
        a0, a = rng.normal(), rng.normal(size=8)
        mse = float((w * (table - a0 - s @ a) ** 2).sum())
        np.testing.assert_allclose(fourier.gap(q, a0, a), mse - q.b_ge2, atol=1e-12)
    # indicator coding with the verifier's refit intercept: the best b for these weights
    wi = rng.normal(size=8)
    m = (s + 1) / 2
    r = table - m @ wi
    b = (w * r).sum()
    mse = float((w * (r - b) ** 2).sum())
    np.testing.assert_allclose(fourier.gap_indicator(q, wi), mse - q.b_ge2, atol=1e-12)


def test_halving_costs_a_quarter_of_b1(table):
    q = fourier.exact(table, P)
    np.testing.assert_allclose(fourier.gap_indicator(q, q.w / 2), q.b1 / 4, rtol=1e-12)
    assert fourier.gap_indicator(q, q.w) == pytest.approx(0.0, abs=1e-12)


def test_residual_estimation_is_exact_with_exact_h_when_no_degree_three():
    rng = np.random.default_rng(3)
    s = fourier.cube(7).astype(float)
    mu, sigma = fourier.bias_constants(P)
    phi = (s - mu) / sigma
    f = 0.4 + phi @ rng.normal(size=7) + sum(rng.normal() * phi[:, i] * phi[:, j]
                                             for i in range(7) for j in range(i))
    q = fourier.exact(f, P)
    assert q.weights[3:].sum() == pytest.approx(0.0, abs=1e-10)
    for rho in (0.1, 0.3):
        y = [fourier.noise_stability(f, P, r) for r in (0.0, rho, 2 * rho)]
        est = residual.fit_levels(np.array(y), q.mean_sq, rho)
        np.testing.assert_allclose(est.b_ge2, q.b_ge2, rtol=1e-10)


def test_residual_estimation_bias_with_higher_degrees_is_the_derived_series(table):
    q = fourier.exact(table, P)
    rho = 0.1
    y = [fourier.noise_stability(table, P, r) for r in (0.0, rho, 2 * rho)]
    est = residual.fit_levels(np.array(y), q.mean_sq, rho)
    assert (est.z > 0).all()  # unconstrained interpolation: the derived series applies
    k = np.arange(q.weights.size)
    bias = sum(q.weights[j] * rho ** (j - 1) * (2.0 ** j - 4) / 2 for j in k[3:])
    np.testing.assert_allclose(est.b_ge2 - q.b_ge2, bias, rtol=1e-9, atol=1e-13)


def test_level_zero_is_the_u_statistic_over_unpaired_evaluations():
    """Pinned choice (docs/verify.md): ŷ_0 uses every pair of evaluations except a drawn pair's
    two members, and B̂ every evaluation."""
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(7, 2)), rng.normal(size=(7, 2))
    level = np.array([1, 1, 1, 2, 2, 2, 2])
    allf = np.concatenate([fa, fb])
    n = len(fa)
    prods = [allf[i] * allf[j] for i in range(2 * n) for j in range(2 * n)
             if i != j and abs(i - j) != n]
    got = residual.residual_estimation(fa, fb, level, 0.2)
    for t in range(2):
        np.testing.assert_allclose(got[t].y[0], np.mean([p[t] for p in prods]), rtol=1e-12)
        np.testing.assert_allclose(got[t].mean_sq, (allf[:, t] ** 2).mean(), rtol=1e-12)
        np.testing.assert_allclose(got[t].y[1], (fa[:3, t] * fb[:3, t]).mean(), rtol=1e-12)


def test_pair_sampler_has_the_rho_correlation_and_marginal():
    rng = np.random.default_rng(1)
    n, rho = 200_000, 0.35
    s, t = residual.draw_pairs(rng, n, 3, P, rho)
    mu, sigma = fourier.bias_constants(P)
    phi_s, phi_t = (2.0 * s - 1 - mu) / sigma, (2.0 * t - 1 - mu) / sigma
    se = 4.0 / np.sqrt(n)  # 4 standard errors (Var φφ′ ≤ ~1.5 here; Var of a mean of 0/1 ≤ ¼)
    np.testing.assert_allclose(t.mean(axis=0), P, atol=se)
    np.testing.assert_allclose((phi_s * phi_t).mean(axis=0), rho, atol=2 * se)


def test_synthetic_learners_report_their_exact_gap():
    lrn = make_learner("mixed", 50, P, seed=2)
    w, b = lrn.optimal()
    q = lrn.exact()
    assert lrn.gap(w) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(lrn.gap(w / 2), q.b1 / 4, rtol=1e-12)
    # weight on an example the learner ignores costs p(1 − p)·w² (its f̂ is 0)
    off = np.setdiff1d(np.arange(50), lrn.coords)[0]
    w2 = w.copy()
    w2[off] = 0.7
    np.testing.assert_allclose(lrn.gap(w2), P * (1 - P) * 0.49, rtol=1e-12)


def test_bad_p_and_cube_sizes_are_refused():
    with pytest.raises(InputError, match="p must be in"):
        fourier.bias_constants(1.0)
    with pytest.raises(InputError, match="2\\^N"):
        fourier.transform(np.zeros(5), 0.5)
