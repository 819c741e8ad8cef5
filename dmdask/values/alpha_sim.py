"""The role of α: the paper's App. B simulation (Fig. 16; REFERENCE §7, structure reconstructed).

n training points with independent binary features x_ij ~ Bernoulli(p_j), the frequencies p_j
on a log grid (d/L features per level), d > n; labels y = Xθ* + σ·noise; the learner is the
min-norm least-squares fit θ̂(S′) = X_{S′}⁺y_{S′} (underdetermined), the output on a held-out
point f(x; S′) = xᵀθ̂(S′). For each α: ``m`` random α-subsets (fixed size αn) are "trained",
an OLS datamodel w(x) ∈ Rⁿ (min-norm, with intercept) is fitted for every held-out x, and
for every feature j the subpopulation S_j = {i : x_ij = 1} is removed from the training set
D: the actual effect f(x; D) − f(x; D∖S_j) (refit) against the predicted effect
Σ_{i∈S_j} w_i(x) (Algorithm 4). The result is their Pearson correlation over the features of
each frequency level and all held-out x, per α (features with S_j empty are left out).

The learner works in kernel form: with K = XXᵀ, f(x; S) = x_testᵀX_Sᵀ(K_SS)⁺y_S, so a fit
costs one |S| × |S| solve whatever d is.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ..errors import InputError
from .api import check_alpha

__all__ = ["AlphaSim", "alpha_simulation"]


class AlphaSim:
    """The simulated data set and learner (seeded)."""

    def __init__(self, n: int = 500, d: int = 1000, levels: int = 8,
                 p_range: tuple[float, float] = (0.005, 0.5), noise: float = 0.1,
                 n_test: int | None = None, seed: int = 0):
        if not (n >= 4 and d > n and levels >= 1 and d >= levels):
            raise InputError(f"need n >= 4, d > n (underdetermined) and d >= levels; got n={n}, "
                             f"d={d}, levels={levels}")
        lo, hi = p_range
        if not 0 < lo <= hi < 1:
            raise InputError(f"frequencies must lie in (0, 1), got {p_range}")
        rng = np.random.default_rng(seed)
        self.n, self.d = int(n), int(d)
        self.n_test = int(n_test or n)
        self.freq_levels = np.geomspace(lo, hi, levels)
        self.level = np.repeat(np.arange(levels), -(-d // levels))[:d]
        self.p = self.freq_levels[self.level]
        self.X = (rng.random((self.n, d)) < self.p).astype(np.float64)
        self.Xt = (rng.random((self.n_test, d)) < self.p).astype(np.float64)
        self.theta = rng.normal(size=d)
        self.y = self.X @ self.theta + noise * rng.normal(size=self.n)
        self.K = self.X @ self.X.T
        self.Kt = self.Xt @ self.X.T
        self.rng = rng

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """f(x; S) on every held-out x for the training rows S (min-norm least squares)."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        if rows.size == 0:
            return np.zeros(self.n_test)
        Ks = self.K[np.ix_(rows, rows)]
        try:  # K_SS is positive definite unless rows of X_S are dependent
            coef = np.linalg.solve(Ks, self.y[rows])
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(Ks, self.y[rows], rcond=1e-10)[0]
        return self.Kt[:, rows] @ coef

    def subsets(self, m: int, alpha: float) -> np.ndarray:
        """m fixed-size α-subsets, bool [m, n]."""
        k = int(round(alpha * self.n))
        out = np.zeros((m, self.n), bool)
        for r in range(m):
            out[r, self.rng.choice(self.n, k, replace=False)] = True
        return out


def _ols_datamodels(masks: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Min-norm OLS with intercept: w [n_test, n] from masks [m, n] and outputs F [m, n_test]."""
    X = masks.astype(np.float64)
    Xc, Fc = X - X.mean(0), F - F.mean(0)
    return np.linalg.lstsq(Xc, Fc, rcond=1e-10)[0].T


def alpha_simulation(*, n: int = 500, d: int = 1000, levels: int = 8,
                     p_range: tuple[float, float] = (0.005, 0.5),
                     alphas=(0.1, 0.2, 0.5, 0.75, 0.9), m_per_n: float = 20.0,
                     noise: float = 0.1, seed: int = 0,
                     on_alpha=None) -> xr.Dataset:
    """Run the App. B simulation; returns ``corr(frequency, alpha)`` (Pearson of actual vs
    predicted subpopulation-removal effects), ``n_pairs``, ``best_alpha(frequency)`` and
    timing. ``m_per_n``: datamodel training runs per α as a multiple of n (the paper's
    m = 20n)."""
    alphas = np.asarray([check_alpha(a) for a in np.atleast_1d(alphas)], np.float64)
    sim = AlphaSim(n=n, d=d, levels=levels, p_range=p_range, noise=noise, seed=seed)
    m = max(int(m_per_n * n), n + 2)
    L = sim.freq_levels.size
    corr = np.full((L, alphas.size), np.nan)
    pairs = np.zeros((L, alphas.size), np.int64)
    t0 = time.perf_counter()
    members = sim.X.astype(bool)  # [n, d]: i ∈ S_j
    full = np.ones(sim.n, bool)
    f_full = sim.outputs(full)
    feats = [j for j in range(sim.d) if members[:, j].any()]
    actual = {j: f_full - sim.outputs(full & ~members[:, j]) for j in feats}  # α-free
    for a_i, a in enumerate(alphas):
        masks = sim.subsets(m, a)
        F = np.stack([sim.outputs(r) for r in masks])
        W = _ols_datamodels(masks, F)  # [n_test, n]
        for lv in range(L):
            js = [j for j in feats if sim.level[j] == lv]
            if not js:
                continue
            x = np.concatenate([actual[j] for j in js])
            y = np.concatenate([W[:, members[:, j]].sum(1) for j in js])
            pairs[lv, a_i] = x.size
            if x.std() > 0 and y.std() > 0:
                corr[lv, a_i] = np.corrcoef(x, y)[0, 1]
        if on_alpha is not None:
            on_alpha(a, time.perf_counter() - t0)
    best = np.array([alphas[np.nanargmax(c)] if np.isfinite(c).any() else np.nan
                     for c in corr])
    return xr.Dataset(
        {"corr": (("frequency", "alpha"), corr), "n_pairs": (("frequency", "alpha"), pairs),
         "best_alpha": (("frequency",), best)},
        coords={"frequency": sim.freq_levels, "alpha": alphas},
        attrs={"n": int(n), "d": int(d), "levels": int(levels), "m": int(m),
               "noise": float(noise), "seed": int(seed),
               "seconds": time.perf_counter() - t0,
               "description": "Pearson correlation of actual vs datamodel-predicted effects of "
                              "removing each feature's subpopulation (paper App. B, Fig. 16)"})
