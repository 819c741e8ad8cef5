"""Semivalues of a cooperative game (REFERENCE §7): Banzhaf, Shapley and Beta-Shapley under one
interface, the *weight measure* μ on q ∈ [0, 1]:

    φ_i^μ = ∫₀¹ ∂F/∂q_i(q·1) dμ(q),   F(q) = E_{S~Bern(q)} U(S)

(μ = δ_½ Banzhaf, Uniform Shapley, Beta(a, b) Beta-Shapley; w(k) = ∫q^{k−1}(1−q)^{n−k}dμ).

Estimators, all returning ``(value, se, n_evaluations)``:

* :func:`exact_semivalue`: enumeration of all 2ⁿ subsets (small games, the reference);
* :func:`msr`: maximum sample reuse on Bernoulli(q) subsets, the difference of means
  mean_{i∈S}U − mean_{i∉S}U — Data Banzhaf at q = ½ (arXiv 2205.15466);
* :func:`quadrature_semivalue`: MSR at the nodes of a Gauss quadrature rule for μ, weighted —
  the route from runs at several α (exact in the quadrature when n ≤ 2G);
* :func:`tmc_shapley`: truncated Monte Carlo Shapley with the official ``DShap.py`` truncation,
  class-skipping and stopping rules (arXiv 1904.02868).

A *game* is a callable ``U(masks bool [B, n]) -> [B]`` (scalar utility) or ``[B, T]`` (one
utility per target). Utilities of the store's runs are in :mod:`dmdask.values.utility`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["MSRStats", "Measure", "exact_semivalue", "measure", "msr", "multilinear_gradient",
           "quadrature_semivalue", "semivalue_weights", "tmc_shapley"]

Game = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Measure:
    """The weight measure μ of a semivalue: ``kind`` "banzhaf" (δ_½), "shapley" (U[0, 1]) or
    "beta" (Beta(a, b) on q; Kwon & Zou's Beta(α, β) is a = β, b = α)."""

    kind: str
    a: float = 1.0
    b: float = 1.0

    def nodes(self, G: int) -> tuple[np.ndarray, np.ndarray]:
        """Quadrature nodes q_g ∈ (0, 1) and weights (summing to 1) exact for polynomials of
        degree ≤ 2G − 1 under μ: Gauss–Legendre (Shapley), Gauss–Jacobi (Beta), the point ½
        (Banzhaf)."""
        if self.kind == "banzhaf":
            return np.array([0.5]), np.array([1.0])
        G = int(G)
        if G < 1:
            raise InputError(f"the number of quadrature nodes must be >= 1, got {G}")
        from scipy.special import roots_jacobi

        # q = (1 + x)/2: q^{a−1}(1−q)^{b−1} ∝ (1−x)^{b−1}(1+x)^{a−1}
        x, w = roots_jacobi(G, self.b - 1.0, self.a - 1.0)
        return (1.0 + x) / 2.0, w / w.sum()


def measure(kind: str, a: float = 1.0, b: float = 1.0) -> Measure:
    """Validate and build a :class:`Measure` (Shapley is Beta(1, 1))."""
    if kind not in ("banzhaf", "shapley", "beta"):
        raise InputError(f"method must be 'banzhaf', 'shapley' or 'beta', not {kind!r}")
    if kind == "shapley":
        return Measure("shapley", 1.0, 1.0)
    if kind == "beta" and not (float(a) > 0 and float(b) > 0):
        raise InputError(f"Beta-Shapley parameters must be > 0, got a={a}, b={b}")
    return Measure(kind, float(a), float(b))


def semivalue_weights(n: int, mu: Measure) -> np.ndarray:
    """w(k), k = 1..n: the weight of a marginal contribution to a set of size k − 1
    (Σ_k C(n−1, k−1)w(k) = 1)."""
    from scipy.special import betaln

    k = np.arange(1, n + 1, dtype=np.float64)
    if mu.kind == "banzhaf":
        return np.full(n, 0.5 ** (n - 1))
    return np.exp(betaln(k - 1 + mu.a, n - k + mu.b) - betaln(mu.a, mu.b))


def _all_masks(n: int) -> np.ndarray:
    if n > 20:
        raise InputError(f"exact enumeration needs n <= 20 players, got {n}")
    idx = np.arange(2 ** n)
    return ((idx[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_semivalue(game: Game, n: int, mu: Measure) -> tuple[np.ndarray, np.ndarray, int]:
    """φ_i = Σ_S w(|S|+1)[U(S∪i) − U(S)] by enumerating all 2ⁿ subsets (the reference);
    se = 0, 2ⁿ evaluations. Returns [n] or [n, T]."""
    masks = _all_masks(n)
    u = np.asarray(game(masks), np.float64)
    w = semivalue_weights(n, mu)
    size = masks.sum(1)
    phi = np.zeros((n,) + u.shape[1:])
    for i in range(n):
        out = ~masks[:, i]
        with_i = np.flatnonzero(out) + (1 << i)  # index of S ∪ i
        d = u[with_i] - u[out]
        phi[i] = np.tensordot(w[size[out]], d, axes=(0, 0))
    return phi, np.zeros_like(phi), int(masks.shape[0])


def multilinear_gradient(game: Game, n: int, q: float) -> np.ndarray:
    """∂F/∂q_i at q·1 exactly: E[U | i ∈ S] − E[U | i ∉ S] over S ~ Bern(q)ⁿ (enumeration)."""
    masks = _all_masks(n)
    u = np.asarray(game(masks), np.float64)
    k = masks.sum(1)
    p = q ** k * (1 - q) ** (n - k)
    out = np.zeros((n,) + u.shape[1:])
    for i in range(n):
        m = masks[:, i]
        pin, pout = p * m, p * ~m
        out[i] = np.tensordot(pin, u, (0, 0)) / pin.sum() - np.tensordot(pout, u, (0, 0)) / pout.sum()
    return out


class MSRStats:
    """Running sums for :func:`msr` over chunks of runs; NaN utilities are left out (per
    target)."""

    def __init__(self):
        self.parts = None

    def add(self, masks: np.ndarray, u: np.ndarray) -> MSRStats:
        X = np.asarray(masks, bool).astype(np.float64)
        U = np.asarray(u, np.float64)
        U = U[:, None] if U.ndim == 1 else U
        W = ~np.isnan(U)
        U = np.where(W, U, 0.0)
        Wf = W.astype(np.float64)
        p = (X.T @ Wf, X.T @ U, X.T @ (U * U), Wf.sum(0), U.sum(0), (U * U).sum(0))
        self.parts = p if self.parts is None else tuple(a + b for a, b in zip(self.parts, p,
                                                                              strict=True))
        return self

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(φ̂ [n, T], se [n, T])."""
        s, C1, C2, m, sy, syy = self.parts
        n_out = m[None] - s
        with np.errstate(invalid="ignore", divide="ignore"):
            mi, mo = C1 / s, (sy[None] - C1) / n_out
            vi = (C2 - s * mi ** 2) / (s - 1)
            vo = (syy[None] - C2 - n_out * mo ** 2) / (n_out - 1)
            phi = np.where((s > 0) & (n_out > 0), mi - mo, 0.0)
            se = np.where((s > 1) & (n_out > 1),
                          np.sqrt(np.maximum(vi, 0) / s + np.maximum(vo, 0) / n_out), np.nan)
        return phi, se


def msr(masks: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum sample reuse: φ̂_i = mean_{t: i∈S_t} u_t − mean_{t: i∉S_t} u_t (0 where a group is
    empty) and its standard error sqrt(s²_in/n_in + s²_out/n_out). ``masks`` [m, n] bool,
    ``u`` [m] or [m, T] (NaN: left out); returns [n] or [n, T]."""
    phi, se = MSRStats().add(masks, u).finish()
    return (phi[:, 0], se[:, 0]) if np.ndim(u) == 1 else (phi, se)


def quadrature_semivalue(game: Game, n: int, mu: Measure, *, runs_per_node: int,
                         nodes: int = 5, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, int]:
    """φ^μ ≈ Σ_g ω_g · MSR(Bern(q_g) subsets) over the quadrature rule of μ: Banzhaf at q = ½,
    Shapley by Gauss–Legendre, Beta by Gauss–Jacobi; se = sqrt(Σ ω_g² se_g²)."""
    rng = np.random.default_rng(seed)
    q, om = mu.nodes(nodes)
    phi = var = 0.0
    for qg, wg in zip(q, om, strict=True):
        masks = rng.random((int(runs_per_node), n)) < qg
        p, s = msr(masks, game(masks))
        phi = phi + wg * p
        var = var + wg ** 2 * s ** 2
    return phi, np.sqrt(var), int(runs_per_node) * len(q)


def _conv_error(mem: list[np.ndarray], n_steps: int = 100) -> float:
    """DShap.py's ``error``: the largest, over the last ``n_steps`` running means, mean relative
    distance to the latest running mean (1.0 before ``n_steps`` permutations)."""
    if len(mem) < n_steps:
        return 1.0
    a = np.asarray(mem)
    a = a.reshape(len(a), -1)
    run = np.cumsum(a, 0) / np.arange(1, len(a) + 1)[:, None]
    last = run[-n_steps:]
    err = np.mean(np.abs(last - last[-1:]) / (np.abs(last[-1:]) + 1e-12), -1)
    return float(np.max(err))


def tmc_shapley(game: Game, n: int, *, v0: float | np.ndarray | None = None,
                v_full: float | np.ndarray | None = None, tolerance: float | None = 0.01,
                patience: int = 5, labels: np.ndarray | None = None, err: float = 0.05,
                max_permutations: int = 1000, min_permutations: int = 100, chunk: int = 16,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """Truncated Monte Carlo Shapley (DShap.py): per random permutation, marginal contributions
    U(prefix ∪ i) − U(prefix) with

    * class-skipping (``labels`` given): a prefix missing a class is not evaluated, its
      utility stays ``v0`` (the untrained score; default U(∅));
    * truncation (``tolerance``; None disables): once |U(prefix) − v_full| ≤
      tolerance·|v_full| for more than ``patience`` consecutive steps, the remaining
      marginals are 0 (``v_full`` default U(D)); a vector utility truncates when every
      component does;
    * stopping: after at least ``min_permutations``, when the running-mean error of
      :func:`_conv_error` drops below ``err``, or at ``max_permutations``.

    Prefixes are evaluated ``chunk`` at a time (the truncation can stop a permutation
    mid-chunk; the unused evaluations are still counted). Returns (φ, se over permutations,
    utility evaluations, info)."""
    rng = np.random.default_rng(seed)
    n_eval = 0
    if v0 is None:
        v0 = np.asarray(game(np.zeros((1, n), bool)), np.float64)[0]
        n_eval += 1
    if v_full is None and tolerance is not None:
        v_full = np.asarray(game(np.ones((1, n), bool)), np.float64)[0]
        n_eval += 1
    v0 = np.asarray(v0, np.float64)
    classes = None if labels is None else np.unique(labels)
    mem: list[np.ndarray] = []
    truncated = 0
    while len(mem) < max_permutations:
        perm = rng.permutation(n)
        contrib = np.zeros((n,) + v0.shape)
        old, count, pos = v0, 0, 0
        prefixes = np.tril(np.ones((n, n), bool))  # row k: the first k + 1 of the permutation
        while pos < n:
            stop = min(n, pos + chunk)
            rows = np.zeros((stop - pos, n), bool)
            rows[:, perm] = prefixes[pos:stop]
            evalable = np.ones(stop - pos, bool)
            if classes is not None:
                evalable = np.array([np.unique(labels[r]).size == classes.size for r in rows])
            u = np.broadcast_to(v0, (stop - pos,) + v0.shape).copy()
            if evalable.any():
                u[evalable] = np.asarray(game(rows[evalable]), np.float64)
                n_eval += int(evalable.sum())
            done = False
            for k in range(stop - pos):
                new = u[k]
                contrib[perm[pos + k]] = new - old
                old = new
                if tolerance is not None:
                    if np.all(np.abs(new - v_full) <= tolerance * np.abs(v_full)):
                        count += 1
                        if count > patience:
                            done = True
                            truncated += 1
                            break
                    else:
                        count = 0
            if done:
                break
            pos = stop
        mem.append(contrib)
        if len(mem) >= min_permutations and _conv_error(mem) < err:
            break
    a = np.asarray(mem)
    T = a.shape[0]
    se = a.std(0, ddof=1) / np.sqrt(T) if T > 1 else np.full(a.shape[1:], np.nan)
    return a.mean(0), se, n_eval, {"permutations": T, "truncated": truncated,
                                   "converged": bool(_conv_error(mem) < err)}

