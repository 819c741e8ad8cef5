"""Synthetic learners with known p-biased Fourier structure, for simulations of the protocols.

A learner here is "train on a subset, return the model's output on one target" as a plain
function: a *junta* f(s) that depends on K ≤ 16 coordinates of the N training examples, plus an
optional seed noise ξ(seed) (uniform, variance ``noise²``, a pure function of the training seed:
retraining with the same seed is bit-identical, a fresh seed is independent). Because f ignores
the other N − K coordinates, its exact quantities are those of the K-dimensional table
(:mod:`dmdask.verify.fourier`) and the simulation only has to draw the coordinates that matter.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..store.sampling import _splitmix64
from . import fourier

__all__ = ["Junta", "LEARNERS", "make_learner", "seed_noise"]


def seed_noise(seeds: np.ndarray, scale: float) -> np.ndarray:
    """ξ(seed): uniform on [−√3·scale, √3·scale] (variance scale²), a pure function of the seed."""
    if not scale:
        return np.zeros(np.shape(seeds))
    u = (_splitmix64(np.asarray(seeds, np.uint64)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return math.sqrt(3.0) * scale * (2.0 * u - 1.0)


class Junta:
    """f(s) = ``table``[s restricted to ``coords``] (+ seed noise), for subsets of N examples."""

    def __init__(self, table: np.ndarray, coords, n_train: int, p: float, *,
                 noise: float = 0.0, name: str = "junta"):
        self.table = np.asarray(table, np.float64)
        self.coords = np.asarray(coords, np.int64)
        k = self.coords.size
        if self.table.shape != (2 ** k,):
            raise InputError(f"a junta on {k} coordinates needs 2^{k} values, got "
                             f"{self.table.shape}")
        if k and (self.coords.min() < 0 or self.coords.max() >= n_train):
            raise InputError(f"junta coordinates outside [0, {n_train})")
        self.n_train, self.p, self.noise, self.name = int(n_train), float(p), float(noise), name
        self.trained = 0
        self._exact = fourier.exact(self.table, self.p)

    @property
    def support(self) -> np.ndarray:
        """The coordinates the output depends on (the simulation draws only these and the
        scores' support: the others change nothing)."""
        return self.coords

    @property
    def bound(self) -> float:
        return float(np.abs(self.table).max() + math.sqrt(3.0) * self.noise)

    def exact(self) -> fourier.Exact:
        """Exact quantities of the noiseless f on its K coordinates."""
        return self._exact

    def optimal(self) -> tuple[np.ndarray, float]:
        """Optimal indicator-coded weights over all N examples and intercept: (w*, b*)."""
        w = np.zeros(self.n_train)
        w[self.coords] = self._exact.w
        return w, self._exact.b

    def b_ge2(self) -> float:
        return self._exact.b_ge2

    def gap(self, w: np.ndarray) -> float:
        """err of weights ``w`` [N] with the intercept refit (the verifier's rule)."""
        w = np.asarray(w, np.float64)
        off = np.setdiff1d(np.flatnonzero(w), self.coords)
        # coordinates outside the junta have f̂({i}) = 0: each costs σ²a_i² = p(1−p)w_i²
        return (fourier.gap_indicator(self._exact, w[self.coords])
                + self.p * (1.0 - self.p) * float((w[off] ** 2).sum()))

    def train(self, masks: np.ndarray, seeds: np.ndarray, view: np.ndarray, *,
              fresh: bool = False) -> np.ndarray:
        """Outputs ``[n, 1]`` of models trained on ``masks`` (columns = the examples ``view``)."""
        view = np.asarray(view)
        pos = np.searchsorted(view, self.coords)
        if pos.size and (pos.max() >= view.size or (view[pos] != self.coords).any()):
            raise InputError("the masks do not cover the learner's coordinates")
        k = self.coords.size
        bits = masks[:, pos].astype(np.int64)
        idx = (bits << np.arange(k - 1, -1, -1)).sum(axis=1) if k else np.zeros(len(masks), int)
        self.trained += len(masks)
        return (self.table[idx] + seed_noise(seeds, self.noise))[:, None]


def _table(k: int, fn) -> np.ndarray:
    return np.asarray(fn(fourier.cube(k).astype(np.float64)), np.float64)


def _mixed(k: int, seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    lin = rng.normal(0, scale / math.sqrt(k), k)
    quad = np.triu(rng.normal(0, 0.6 / k, (k, k)), 1)
    return lambda s: np.tanh(0.3 + s @ lin + np.einsum("ni,ij,nj->n", s, quad, s))


def _sigma_p(p: float) -> tuple[float, float]:
    return fourier.bias_constants(p)


LEARNERS = ("linear", "parity2", "majority3", "mixed", "strong", "cubic")


def make_learner(name: str, n_train: int, p: float, *, noise: float = 0.0, k: int = 8,
                 seed: int = 0) -> Junta:
    """A named synthetic learner on ``k`` coordinates spread over ``n_train`` examples.

    ``linear``: Σ c_i φ_i (B_{≥2} = 0); ``parity2``: 0.3 φ_1 + 0.5 φ_{1,2}-like on a sign
    basis (B_2 > 0, B_{≥3} = 0); ``majority3``: majority of 3 (degrees 1 and 3 at p = ½);
    ``mixed``: tanh of a random quadratic form on k coordinates (all degrees, |f| < 1);
    ``strong``: the same with a 3× larger linear part (B_1/4 above ε = 0.1: a*/2 must fail);
    ``cubic``: a linear part plus a degree-3 product (B_3 > 0, the residual bias case).
    """
    rng = np.random.default_rng(seed)
    mu, sigma = _sigma_p(p)
    if name == "linear":
        c = rng.uniform(-1, 1, k) / k
        fn = lambda s: ((s - mu) / sigma) @ c  # noqa: E731
    elif name == "parity2":
        k = max(k, 2)
        fn = lambda s: 0.3 * (s[:, 0] - mu) / sigma + 0.3 * ((s[:, 0] - mu) * (s[:, 1] - mu)) / sigma**2  # noqa: E501, E731
    elif name == "majority3":
        k = max(k, 3)
        fn = lambda s: np.sign(s[:, :3].sum(axis=1)) * 0.8  # noqa: E731
    elif name == "mixed":
        fn = _mixed(k, seed)
    elif name == "strong":
        fn = _mixed(k, seed, scale=3.0)
    elif name == "cubic":
        k = max(k, 3)
        fn = lambda s: 0.4 * np.tanh(s[:, :k] @ np.linspace(1, -1, k) / k) + 0.3 * s[:, 0] * s[:, 1] * s[:, 2]  # noqa: E501, E731
    else:
        raise InputError(f"unknown learner {name!r}; one of {LEARNERS}")
    coords = np.sort(rng.choice(n_train, size=k, replace=False))
    return Junta(_table(k, fn), coords, n_train, p, noise=noise, name=name)
