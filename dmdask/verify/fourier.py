"""p-biased Fourier analysis on {±1}^N, exact on enumerable N (REFERENCE.md §6.2).

Sign coding s ∈ {±1}^N (s_i = 2 m_i − 1 for a mask m), s ~ B_p (independent, P(s_i = 1) = p),
μ = 2p − 1, σ² = 4p(1 − p), characters φ_T(s) = Π_{i∈T} (s_i − μ)/σ. Everything here works on
a full table of f over the 2^N points (N ≤ ~16), as the independent reference the protocols are
checked against: the weights B_k, the optimal linear model with intercept, the gap of any
candidate, and noise stability through the ρ-pair kernel itself (not through Σ B_k ρ^k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Exact", "bias_constants", "cube", "cube_weights", "exact", "gap",
           "gap_indicator", "noise_stability", "transform"]


def bias_constants(p: float) -> tuple[float, float]:
    """(μ, σ) of B_p."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be in (0, 1), got {p!r}")
    return 2.0 * p - 1.0, 2.0 * math.sqrt(p * (1.0 - p))


def cube(n: int) -> np.ndarray:
    """All 2^n points of {±1}^n, int8 ``[2^n, n]``; row index bit i (from the last) is s_i."""
    if not 0 < n <= 20:
        raise InputError(f"the cube is enumerated for 1 <= N <= 20, got N={n}")
    idx = np.arange(2 ** n)
    bits = (idx[:, None] >> np.arange(n)[None, ::-1]) & 1
    return (2 * bits - 1).astype(np.int8)


def cube_weights(n: int, p: float) -> np.ndarray:
    """B_p probabilities of the rows of :func:`cube`."""
    ones = (cube(n) > 0).sum(axis=1)
    return p ** ones * (1.0 - p) ** (n - ones)


def _axiswise(table: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply the 2×2 ``mat`` along every axis of the 2×…×2 tensor ``table``."""
    n = table.ndim
    for ax in range(n):
        table = np.moveaxis(np.tensordot(mat, table, axes=([1], [ax])), 0, ax)
    return table


def transform(fvals: np.ndarray, p: float) -> np.ndarray:
    """All coefficients f̂(T) = E_{B_p} f φ_T as a 2×…×2 tensor (index 1 on axis i: i ∈ T).

    ``fvals``: f on the rows of :func:`cube` (axis i of the tensor is coordinate i, value
    index 0 ↔ s_i = −1)."""
    fvals = np.asarray(fvals, np.float64)
    n = int(round(math.log2(fvals.size)))
    if 2 ** n != fvals.size:
        raise InputError(f"f must have 2^N values, got {fvals.size}")
    mu, sigma = bias_constants(p)
    # row 0: weight of s_i; row 1: weight × φ(s_i), for s_i = −1, +1
    mat = np.array([[1.0 - p, p], [(1.0 - p) * (-1.0 - mu) / sigma, p * (1.0 - mu) / sigma]])
    return _axiswise(fvals.reshape((2,) * n), mat)


def noise_stability(fvals: np.ndarray, p: float, rho: float) -> float:
    """h_f(ρ) = E f(s) f(s′) for the ρ-correlated pair of Definition 2, by its kernel: each
    coordinate of s′ keeps s_i with probability ρ, else is redrawn from B_p."""
    fvals = np.asarray(fvals, np.float64)
    n = int(round(math.log2(fvals.size)))
    pi = np.array([1.0 - p, p])
    kernel = rho * np.eye(2) + (1.0 - rho) * np.tile(pi, (2, 1))  # K[s, s′]
    t = fvals.reshape((2,) * n)
    moved = _axiswise(t, kernel)  # E[f(s′) | s]
    w = cube_weights(n, p).reshape((2,) * n)
    return float((w * t * moved).sum())


@dataclass
class Exact:
    """Exact Fourier quantities of one f under B_p (sign coding unless named otherwise)."""

    p: float
    mean_sq: float            # E f²
    weights: np.ndarray       # B_k for k = 0..N
    coef0: float              # f̂(∅)
    coef1: np.ndarray         # f̂({i})
    theta0: float             # optimal intercept, sign coding
    theta: np.ndarray         # optimal slopes, sign coding: f̂({i})/σ
    w: np.ndarray             # optimal weights, indicator coding: 2θ = expected influence
    b: float                  # optimal intercept, indicator coding

    @property
    def b_ge2(self) -> float:
        """B_{≥2} = mse of the optimal linear model."""
        return float(self.weights[2:].sum())

    @property
    def b1(self) -> float:
        return float(self.weights[1])

    def h(self, rho: float) -> float:
        """Σ_k B_k ρ^k."""
        return float(np.polynomial.polynomial.polyval(rho, self.weights))


def exact(fvals: np.ndarray, p: float) -> Exact:
    """Exact quantities of f given on the rows of :func:`cube`."""
    coefs = transform(fvals, p)
    n = coefs.ndim
    deg = np.indices((2,) * n).sum(axis=0)
    weights = np.bincount(deg.ravel(), weights=(coefs ** 2).ravel(), minlength=n + 1)
    coef0 = float(coefs[(0,) * n])
    coef1 = np.array([coefs[tuple(1 if j == i else 0 for j in range(n))] for i in range(n)])
    mu, sigma = bias_constants(p)
    theta = coef1 / sigma
    theta0 = coef0 - mu / sigma * coef1.sum()
    w = 2.0 * theta
    b = theta0 - theta.sum()  # b + wᵀm = θ0 + θᵀs with s = 2m − 1
    w_ = cube_weights(n, p)
    mean_sq = float((w_ * np.asarray(fvals, np.float64) ** 2).sum())
    return Exact(p=float(p), mean_sq=mean_sq, weights=weights, coef0=coef0, coef1=coef1,
                 theta0=float(theta0), theta=theta, w=w, b=float(b))


def gap(q: Exact, a0: float, a: np.ndarray) -> float:
    """err(a_0, a) = mse(a_0, a) − B_{≥2} in sign coding (REFERENCE.md §6.2, derived)."""
    mu, sigma = bias_constants(q.p)
    a = np.asarray(a, np.float64)
    return float((q.coef0 - a0 - mu * a.sum()) ** 2 + ((q.coef1 - sigma * a) ** 2).sum())


def gap_indicator(q: Exact, w: np.ndarray, b: float | None = None) -> float:
    """The gap of indicator-coded weights ``w`` (prediction b + wᵀm); ``b=None`` refits the
    intercept (the verifier's rule), which removes the intercept term."""
    w = np.asarray(w, np.float64)
    a = w / 2.0
    if b is None:
        mu, _ = bias_constants(q.p)
        a0 = q.coef0 - mu * a.sum()
    else:
        a0 = b + a.sum()
    return gap(q, a0, a)
